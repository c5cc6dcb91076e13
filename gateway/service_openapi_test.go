package gateway_test

import (
	"context"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/etbproject/etb/client"
	"github.com/etbproject/etb/enforce"
)

// openAPI is the part of docs/api/openapi.yaml the test reads.
type openAPI struct {
	OpenAPI string                          `yaml:"openapi"`
	Paths   map[string]map[string]yaml.Node `yaml:"paths"`
}

var httpMethods = []string{"get", "post", "put", "delete", "patch", "head", "options"}

// operations returns "METHOD /path" → declared response status codes.
func (s *openAPI) operations(t *testing.T) map[string][]int {
	out := map[string][]int{}
	for path, item := range s.Paths {
		for key, node := range item {
			if !slices.Contains(httpMethods, key) {
				continue
			}
			var op struct {
				Responses map[string]yaml.Node `yaml:"responses"`
			}
			if err := node.Decode(&op); err != nil {
				t.Fatalf("%s %s: %v", key, path, err)
			}
			var codes []int
			for code := range op.Responses {
				n, err := strconv.Atoi(code)
				if err != nil {
					t.Fatalf("%s %s: response %q is not a status code", key, path, code)
				}
				codes = append(codes, n)
			}
			if len(codes) == 0 {
				t.Fatalf("%s %s declares no responses", key, path)
			}
			out[strings.ToUpper(key)+" "+path] = codes
		}
	}
	return out
}

// The spec and the Service agree: every route served is specified, every
// specified operation is served, and every status the Service answers with
// is declared for the operation.
func TestOpenAPISpecMatchesService(t *testing.T) {
	b, err := os.ReadFile("../docs/api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var spec openAPI
	if err := yaml.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(spec.OpenAPI, "3.1") {
		t.Fatalf("openapi %q, want 3.1.x", spec.OpenAPI)
	}
	ops := spec.operations(t)
	e := newEnv(t, t.TempDir(), 0)

	var specified, served []string
	for op := range ops {
		if !strings.Contains(op, " /log/") { // served by ledger.NewHandler in etb serve
			specified = append(specified, op)
		}
	}
	served = e.svc.Routes()
	sort.Strings(specified)
	sort.Strings(served)
	if !slices.Equal(specified, served) {
		t.Fatalf("spec operations\n  %v\nService routes\n  %v", specified, served)
	}

	// A real execution for the {id} routes.
	ctx := context.Background()
	spec0, err := enforce.DescribeExec([]string{"echo", "spec"}, os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	auth, err := e.client("/agent/a").Decide(ctx, spec0, client.Task{})
	if err != nil || !auth.Permitted() {
		t.Fatalf("%+v %v", auth, err)
	}
	callers := map[string]*http.Client{}
	for _, class := range []string{"/agent/a", "/enforcer/e", "/approver/p", "/admin/o"} {
		callers[class] = &http.Client{Transport: &http.Transport{TLSClientConfig: e.tlsFor(class)}, Timeout: 10 * time.Second}
	}
	for op, declared := range ops {
		if strings.Contains(op, " /log/") {
			continue
		}
		method, path, _ := strings.Cut(op, " ")
		path = strings.ReplaceAll(path, "{id}", auth.Execution)
		for class, hc := range callers {
			for _, body := range []string{"{}", `{"unknown":1}`} {
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				var req *http.Request
				if method == http.MethodPost {
					req, _ = http.NewRequestWithContext(rctx, method, e.url+path, strings.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
				} else {
					req, _ = http.NewRequestWithContext(rctx, method, e.url+path, nil)
				}
				resp, err := hc.Do(req)
				if err != nil {
					cancel()
					t.Fatalf("%s as %s: %v", op, class, err)
				}
				ct := resp.Header.Get("Content-Type")
				resp.Body.Close()
				cancel()
				switch {
				case resp.StatusCode == http.StatusMethodNotAllowed,
					resp.StatusCode == http.StatusNotFound && !strings.HasPrefix(ct, "application/json"):
					t.Errorf("%s as %s: %d %s — not served", op, class, resp.StatusCode, ct)
				case !slices.Contains(declared, resp.StatusCode):
					t.Errorf("%s as %s with %s: status %d is not declared (declared %v)", op, class, body, resp.StatusCode, declared)
				}
			}
		}
	}
}

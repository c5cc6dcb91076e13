# The Rego equivalent of etb's default policy (policy/default.yaml), for
# policybench: the same read-only allow-list, the same forbid rules, forbid
# over permit, default deny, and the permit's timeout tightened by the rule.
package etb.authz

read_only := {
	"ls", "cat", "echo", "pwd", "whoami", "id", "date", "uname",
	"head", "tail", "wc", "grep", "sort", "uniq", "true", "printf",
}

shell if input.action.kind == "shell.exec"

permits contains "allow-read-only" if {
	shell
	read_only[input.action.name]
	input.action.target.program in {concat("", ["/usr/bin/", input.action.name]), concat("", ["/bin/", input.action.name])}
}

permits contains "allow-sleep" if {
	shell
	input.action.name == "sleep"
	input.action.target.program in {"/usr/bin/sleep", "/bin/sleep"}
}

# The MCP server that `etb mcp` was configured with may start.
permits contains "allow-mcp-server-start" if input.action.kind == "mcp.server_start"

short_option(a) if {
	startswith(a, "-")
	not startswith(a, "--")
}

sort_writes(a) if startswith(a, "--output")

sort_writes(a) if startswith(a, "--compress-program")

sort_writes(a) if {
	short_option(a)
	contains(a, "o")
}

forbids contains "forbid-writing-output" if {
	shell
	input.action.name == "sort"
	some a in input.action.args
	sort_writes(a)
}

forbids contains "forbid-writing-output" if {
	shell
	input.action.name == "uniq"
	count([a | some a in input.action.args; not startswith(a, "-")]) > 1
}

rm_dangerous(a) if a in {"--recursive", "--force"}

rm_dangerous(a) if {
	short_option(a)
	some c in ["r", "R", "f"]
	contains(a, c)
}

forbids contains "forbid-recursive-delete" if {
	shell
	input.action.name == "rm"
	some a in input.action.args
	rm_dangerous(a)
}

forbids contains "forbid-network-tools" if {
	shell
	input.action.name in {"curl", "wget", "nc", "ncat", "netcat"}
}

# Timeouts in seconds: the default obligation, tightened by a permit rule.
timeouts := {"allow-read-only": 300, "allow-sleep": 60, "allow-mcp-server-start": 300}

default decision := {"decision": "deny", "rules": ["etb.default-deny"]}

decision := {"decision": "deny", "rules": sort(forbids)} if count(forbids) > 0

decision := {"decision": "permit", "rules": sort(permits), "timeout_s": min({t | some r in permits; t := timeouts[r]})} if {
	count(forbids) == 0
	count(permits) > 0
}

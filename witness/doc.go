// Package witness is etb's C2SP tlog-witness: a server that cosigns
// checkpoints of the logs it knows once they are proved consistent with the
// last checkpoint it cosigned for that log, a client for that protocol, a
// Publisher that gathers a quorum of cosignatures for a log's checkpoints,
// and VerifyCosigned, the offline check of such a quorum.
//
// Cosignatures are C2SP tlog-cosignature cosignature/v1 (Ed25519,
// timestamped) note signatures. The witness persists, per log origin, the
// latest checkpoint it cosigned in the SQLite table witness_checkpoints and
// replaces it only by compare-and-swap on its size, so that its view of a log
// never moves backwards or sideways. Validly signed checkpoints it refuses as
// inconsistent are kept in witness_refused (Refused) as possible evidence of
// a fork. Checkpoints must be etb's: no extension lines.
//
// The package owns the witness's state and the cosigning decision. It must
// never cosign a checkpoint whose log signature does not verify, which is not
// proved consistent with the stored one, or before the new state is durable;
// and the Publisher must never count a cosignature it did not verify, nor make
// the log's appends wait for witnesses.
package witness

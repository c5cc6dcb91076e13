// Package ledger is etb's append-only RFC 6962 Merkle log: layer 6, proof
// storage.
//
// Each entry is the canonical bytes of one lineage event (at most
// MaxEntrySize bytes). Appends are group-committed by one sequencer goroutine
// per Log: a batch of entries, every new complete subtree hash and a new
// checkpoint are written in one exclusive storage transaction, so a committed
// entry is always covered by a committed checkpoint and two writers on the same
// storage can never fork the tree. Checkpoints are C2SP tlog-checkpoint signed
// notes (Ed25519, golang.org/x/mod/sumdb/note); per-entry proofs are C2SP
// tlog-proof texts that verify offline with VerifyProof.
//
// The package owns the Merkle log, its durability and its proofs. It must
// never rewrite or delete an entry, a node or a checkpoint, and never serve a
// proof it did not compute from stored hashes. Storage is behind the Storage
// interface; the tree logic and signing never live in a storage
// implementation.
package ledger

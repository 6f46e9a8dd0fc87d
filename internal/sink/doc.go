// Package sink stores export archives in Google Cloud Storage and announces
// them on the outbox Pub/Sub topic (the claim-check pattern: a message says
// where the archive is, never carries it).
//
// Archives writes each exported state of a task once, under a deterministic
// name with an if-not-exists precondition, and checks the CRC32C GCS holds
// against the one computed while streaming. Outbox publishes one notice per
// archive (task.exported) and per deleted task (task.deleted), following the
// v1 contract documented in docs/outbox.md and docs/outbox-v1.schema.json.
// Tail prints outbox messages for the "receiver outbox tail" command.
package sink

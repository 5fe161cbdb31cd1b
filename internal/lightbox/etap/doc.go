// Package etap is LightBox's encrypted tunnel between a trusted gateway and
// a middlebox run by someone else, built so that the channel reveals
// nothing about the traffic inside it: no packet sizes, counts, headers or
// timing.
//
// Packets travel as one stream of entries
//
//	u32 caplen | u32 origlen | i64 timestamp (ns) | frame
//
// cut into fixed-size records. Every record on the wire is exactly
// RecordSize+16 bytes: a type byte, the number of stream bytes it carries,
// those bytes, zeros, and the AES-256-GCM tag. Packets cross record
// boundaries freely. A sender either emits records at a constant rate,
// padding when it has nothing to send (busy and idle traffic then look the
// same), or as fast as it can with a flush timer that bounds latency.
//
// Each direction has its own key. The nonce is the direction and a 64-bit
// record sequence number, which the additional data binds together with
// the key epoch, so a dropped, reordered, replayed, tampered or truncated
// record is detected (the stream ends with an authenticated close record)
// and reported as such. Keys ratchet forward every RekeyRecords records;
// a nonce never repeats under a key.
//
// The handshake authenticates both ends with a pre-shared key and an
// ephemeral X25519 exchange (forward secrecy), and fixes the record size.
//
// Trust boundary: on the middlebox side everything after Open — decrypted
// packets, the trusted clock — lives in the middlebox process's own
// memory, which plays the enclave's part on hardware without a TEE; the
// transport and everything on the wire are untrusted.
package etap

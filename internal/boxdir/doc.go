// Package boxdir is Bento's directory of boxes, built from the Tor
// network's own data with no server anyone must trust (docs/boxes.md).
//
// A relay announces the box beside it with a field in its ContactInfo,
// which its signed descriptor carries ("bentobox:ADDRESS.onion:PORT", in
// the spirit of the ContactInfo Information Sharing convention). The box,
// reached at that onion address, serves a statement signed with the onion
// service's own key that names the relay it stands beside, its end and the
// digest of its policy. A client that reads the relay descriptors its tor
// already has, fetches each announced box's policy through Tor and checks
// that the statement is signed by the onion address it dialled, names the
// relay that announced it and matches the policy, learns every box; a box
// cannot claim another operator's relay (that relay's descriptor does not
// point at it), and a relay cannot claim another's box (the box's
// statement names its own relay).
//
// The package holds the announcement field, the statement (format,
// signing with tor's onion-service key, verification), the parsers of the
// directory documents the client reads (relay descriptors and network
// status), discovery, and the choice among boxes.
package boxdir

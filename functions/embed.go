// Package functions holds the shipped functions' code, and embeds the
// Dropbox for the bento CLI's shard command, which places one Dropbox
// instance per share (docs/functions.md, "Shard").
package functions

import "embed"

// Dropbox is functions/dropbox: bento.toml and main.star under "dropbox/".
//
//go:embed dropbox/bento.toml dropbox/main.star
var Dropbox embed.FS

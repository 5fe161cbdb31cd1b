// Package dust spawns dust motes (seed 002): a Tor relay and a Bento box
// beside it that live for a set time, announce their end, and leave
// nothing behind. A mote is described by a template, a plain TOML file
// anyone can read (templates/mote.toml), from which the package renders
// the relay's torrc and the box's bentorc, and, for the cloud, a
// cloud-init user-data file and a Kubernetes Job.
//
// The local provider runs a mote on this machine: a supervisor process
// (`bento dust supervise`, detached) starts tor with an empty defaults
// file and the rendered torrc, then bentod, waits for the end (or `bento
// dust down`), stops both and removes the mote's directory.
package dust

module github.com/torbento/bento

go 1.26.8

require github.com/BurntSushi/toml v1.6.0

require (
	github.com/gopacket/gopacket v1.7.0
	golang.org/x/net v0.55.0 // indirect
)

require (
	go.starlark.net v0.0.0-20260908191801-89a6a09411d5
	golang.org/x/sys v0.45.0
)

require filippo.io/edwards25519 v1.2.0 // indirect

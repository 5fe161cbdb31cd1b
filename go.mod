module github.com/torbento/bento

go 1.26.8

require github.com/BurntSushi/toml v1.6.0

require (
	go.starlark.net v0.0.0-20260908191801-89a6a09411d5
	golang.org/x/sys v0.42.0 // indirect
)

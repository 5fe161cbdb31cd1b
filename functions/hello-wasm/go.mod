module example.org/hello-wasm

go 1.24

require github.com/torbento/bento/sdk/go v0.0.0

replace github.com/torbento/bento/sdk/go => ../../sdk/go

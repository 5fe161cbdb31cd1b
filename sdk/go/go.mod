module github.com/torbento/bento/sdk/go

go 1.24

package main

import (
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/torbento/bento/internal/atomicfile"
	"github.com/torbento/bento/internal/pintls"
	"github.com/torbento/bento/internal/safelog"
	"github.com/torbento/bento/internal/server"
)

// setupTLS lets direct clients speak TLS 1.3 with bentod's certificate
// (DataDirectory/tls_cert.pem, created once), and publishes its pin in
// the log and in DataDirectory/tls_fingerprint for the operator to hand
// out (bento --pin, or HOST:PORT#sha256:...).
func setupTLS(srv *server.Server, dataDir string, log *slog.Logger) error {
	id, err := pintls.LoadOrCreate(dataDir)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dataDir, "tls_fingerprint"), []byte(id.Fingerprint+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing the TLS fingerprint: %w", err)
	}
	srv.SetTLS(id.ServerConfig())
	safelog.Notice(log, "TLS for direct clients: give them this pin", "pin", id.Fingerprint)
	return nil
}

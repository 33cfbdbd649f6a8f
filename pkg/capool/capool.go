// Package capool builds the certificate pool a client trusts when a
// deployment names a CA file of its own: the system's roots and that
// file's certificates. The CLI uses it for the coordinator's CA, the
// coordinator for its identity provider's.
package capool

import (
	"crypto/x509"
	"fmt"
	"os"
)

// Load returns a pool of the system's roots (none on a system without
// them) and the PEM certificates in file. what names the file in the
// errors, e.g. "CA file"; a file that cannot be read, or holds no PEM
// certificate, is an error.
func Load(file, what string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s holds no PEM certificate", what, file)
	}
	return pool, nil
}

package harness

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Etcd is a single-member etcd serving plain HTTP on 127.0.0.1.
type Etcd struct {
	// URL is the client URL, e.g. http://127.0.0.1:40123.
	URL string
	// LogPath is the file receiving etcd's output.
	LogPath string

	proc *Process
}

// StartEtcd starts etcd with its data under dir and waits until it is
// healthy. The caller must call Close.
func StartEtcd(ctx context.Context, dir string) (*Etcd, error) {
	bin, err := Binary("etcd")
	if err != nil {
		return nil, err
	}
	e := &Etcd{LogPath: filepath.Join(dir, "etcd.log")}
	err = onFreePorts(2, func(ports []int) error {
		client := "http://" + hostPort(ports[0])
		peer := "http://" + hostPort(ports[1])
		data := filepath.Join(dir, "etcd-data")
		os.RemoveAll(data)
		args := []string{
			"--name=default",
			"--data-dir=" + data,
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=default=" + peer,
			"--unsafe-no-fsync",
			"--log-level=warn",
		}
		p, err := StartProcess("etcd", bin, args, EnvironWithout("ETCD_"), e.LogPath)
		if err != nil {
			return err
		}
		hc := &http.Client{Timeout: 2 * time.Second}
		err = p.waitReady(ctx, 30*time.Second, func(ctx context.Context) error {
			b, err := getOK(ctx, hc, client+"/health", nil)
			if err != nil {
				return err
			}
			if !strings.Contains(string(b), `"health":"true"`) {
				return fmt.Errorf("unhealthy: %s", b)
			}
			return nil
		})
		if err != nil {
			return err
		}
		e.URL, e.proc = client, p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	return e, nil
}

// Pid returns etcd's process id.
func (e *Etcd) Pid() int { return e.proc.Pid() }

// Close stops etcd (SIGTERM, then SIGKILL of its process group).
func (e *Etcd) Close() error {
	e.proc.Stop()
	return nil
}

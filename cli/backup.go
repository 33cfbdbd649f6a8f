package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

func newCoordinatorBackupCmd(g *globals) *cobra.Command {
	var (
		coord, dataDir, caFile string
		insecure               bool
	)
	c := &cobra.Command{
		Use:   "backup <file>",
		Short: "Write a consistent snapshot of the coordinator's store to a file",
		Long: `Write a consistent snapshot of the coordinator's store (users, clusters,
roles, assignments, the mesh CA and signing keys, the audit log) to <file>,
mode 0600, replacing it atomically. The snapshot is checked before it
replaces the file.

By default the running coordinator takes the snapshot while it serves:
you must be logged in to it as an administrator. With --data-dir the
store file is read directly, which works only while no coordinator runs
on it.

To restore, stop the coordinator, install the file as coordinator.db in
its data directory (mode 0600, owned by the coordinator's user) and start
it again; see deploy/README.md.`,
		Example: `  clustral coordinator backup clustral-$(date +%F).db
  clustral coordinator backup --coordinator https://clustral.example.com backup.db
  clustral coordinator backup --data-dir /var/lib/clustral backup.db   # coordinator stopped`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if dataDir != "" && (coord != "" || caFile != "") {
				return usageError{errors.New("--data-dir reads the store directly; leave out --coordinator and --ca-file")}
			}
			return writeBackup(args[0], func(w io.Writer) (string, error) {
				if dataDir != "" {
					db := filepath.Join(dataDir, "coordinator.db")
					_, err := store.BackupFile(db, w, 2*time.Second)
					return db, err
				}
				return backupOnline(c.Context(), g, coord, caFile, insecure, w)
			}, g.stdout)
		},
	}
	f := c.Flags()
	f.StringVar(&coord, "coordinator", "", "coordinator URL (default: the one you are logged in to)")
	f.StringVar(&caFile, "ca-file", "", "PEM bundle to trust for the coordinator (default: the login's)")
	f.BoolVar(&insecure, "insecure", false, "allow a plain http:// --coordinator on a host other than this machine")
	f.StringVar(&dataDir, "data-dir", "", "read the store in this directory instead, with the coordinator stopped")
	return c
}

// backupOnline streams a snapshot from the running coordinator to w with
// the stored session, and returns the coordinator's URL.
func backupOnline(ctx context.Context, g *globals, coord, caFile string, insecure bool, w io.Writer) (string, error) {
	if coord != "" {
		var err error
		if coord, err = coordinatorURL(coord, insecure); err != nil {
			return "", usageError{err}
		}
	}
	_, api, err := g.session()
	if err != nil {
		return "", err
	}
	base, hc := api.BaseURL(), api.HTTPClient()
	if coord != "" {
		base = coord
	}
	if caFile != "" {
		if hc, err = newHTTPClient(caFile, nil); err != nil {
			return "", err
		}
	}
	api = coordclient.New(base, api.Token(), hc)
	body, err := api.Open(ctx, proto.APIVersion+"/admin/backup", nil)
	if errors.Is(err, coordclient.ErrUnreachable) {
		return "", withHint(exitUnreach, err, "check the URL, or back up offline with --data-dir while the coordinator is stopped")
	}
	if err != nil {
		return "", cliErr(err)
	}
	defer body.Close()
	if _, err := io.Copy(w, body); err != nil {
		return "", fmt.Errorf("backup from %s interrupted: %w", base, err)
	}
	return base, nil
}

// writeBackup writes what snapshot produces to a temporary file next to
// path, checks that it is a complete store, and renames it into place with
// mode 0600. A failed backup leaves path as it was.
func writeBackup(path string, snapshot func(io.Writer) (string, error), out io.Writer) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename, a no-op
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("backup: %w", err)
	}
	from, err := snapshot(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	counts, err := store.Verify(tmp)
	if err != nil {
		return fmt.Errorf("the snapshot from %s is not a complete store: %w", from, err)
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	parts := make([]string, 0, len(counts))
	for _, b := range []store.Bucket{store.Users, store.Clusters, store.Roles, store.Assignments, store.Nodes} {
		parts = append(parts, fmt.Sprintf("%d %s", counts[b], b))
	}
	fmt.Fprintf(out, "Backup of %s written to %s (%d bytes: %s).\n", from, path, fi.Size(), strings.Join(parts, ", "))
	return nil
}

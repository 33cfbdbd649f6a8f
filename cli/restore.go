package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clustral/clustral/coordinator/store"
)

func newCoordinatorRestoreCmd(g *globals) *cobra.Command {
	var cfg store.EtcdConfig
	c := &cobra.Command{
		Use:   "restore <file>",
		Short: "Load a backup into the coordinator's etcd store",
		Long: `Load a backup (the file clustral coordinator backup writes, from either
store) into a coordinator's etcd store: the keys below --etcd-prefix, which
must be empty. Stop every coordinator using the prefix first. If the
restore is interrupted, the prefix stays marked and a coordinator refuses
to start on it: delete the prefix (etcdctl del --prefix <prefix>/) and run
the restore again.

The settings are the coordinator's --etcd-* settings, as flags or as
CLUSTRAL_ETCD_* variables. With the default bbolt store there is nothing to
load: install the backup as coordinator.db in the data directory instead
(see deploy/README.md).`,
		Example: `  clustral coordinator restore --etcd-endpoints https://etcd-0.example.com:2379 \
      --etcd-cert client.crt --etcd-key client.key --etcd-ca etcd-ca.crt backup.db`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := bindEnvAndFile(c, "CLUSTRAL", ""); err != nil {
				return err
			}
			if _, err := os.Stat(args[0]); err != nil {
				return usageError{fmt.Errorf("backup file: %w", err)}
			}
			if len(cfg.Endpoints) == 0 {
				return usageError{errors.New("restore loads a backup into etcd: set --etcd-endpoints (with the bbolt store, install the file as coordinator.db instead)")}
			}
			if err := cfg.Check(); err != nil {
				return usageError{err}
			}
			etcd, err := store.OpenEtcd(c.Context(), cfg)
			if err != nil {
				return err
			}
			defer etcd.Close()
			counts, err := etcd.Restore(args[0])
			if err != nil {
				return err
			}
			parts := make([]string, 0, 5)
			for _, b := range []store.Bucket{store.Users, store.Clusters, store.Roles, store.Assignments, store.Nodes} {
				parts = append(parts, fmt.Sprintf("%d %s", counts[b], b))
			}
			fmt.Fprintf(g.stdout, "Restored %s into etcd prefix %s (%s).\n", args[0], etcd.Prefix(), strings.Join(parts, ", "))
			return nil
		},
	}
	f := c.Flags()
	f.StringSliceVar(&cfg.Endpoints, "etcd-endpoints", nil, "etcd client URLs (e.g. https://etcd-0.example.com:2379, comma-separated or repeated)")
	f.StringVar(&cfg.CertFile, "etcd-cert", "", "TLS client certificate for etcd (PEM)")
	f.StringVar(&cfg.KeyFile, "etcd-key", "", "key of --etcd-cert (PEM)")
	f.StringVar(&cfg.CAFile, "etcd-ca", "", "PEM bundle that signs etcd's serving certificate (default: the system roots)")
	f.StringVar(&cfg.Prefix, "etcd-prefix", store.DefaultEtcdPrefix, "etcd key prefix of the coordinator's state; must be empty")
	return c
}

package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Etcd is a single-member etcd on 127.0.0.1, serving plain HTTP (StartEtcd)
// or HTTPS with client certificates (StartEtcdTLS).
type Etcd struct {
	// URL is the client URL, e.g. http://127.0.0.1:40123 (https with TLS).
	URL string
	// LogPath is the file receiving etcd's output.
	LogPath string

	component
}

// StartEtcd starts etcd with its data under dir and waits until it is
// healthy. The caller must call Close.
func StartEtcd(ctx context.Context, dir string) (*Etcd, error) {
	return startEtcd(ctx, dir, nil)
}

// EtcdTLS are the files of an etcd serving HTTPS and requiring client
// certificates (StartEtcdTLS).
type EtcdTLS struct {
	// CAFile signs the server's and the client's certificates.
	CAFile string
	// ClientCertFile and ClientKeyFile are a client certificate etcd
	// accepts.
	ClientCertFile, ClientKeyFile string
}

// StartEtcdTLS is StartEtcd with etcd serving HTTPS on 127.0.0.1 and
// requiring a client certificate signed by ca (--client-cert-auth). The
// files to reach it are in the returned EtcdTLS.
func StartEtcdTLS(ctx context.Context, dir string, ca *CA) (*Etcd, *EtcdTLS, error) {
	srvCert, srvKey, err := ca.Issue("etcd", nil, []string{"127.0.0.1", "localhost"}, false)
	if err != nil {
		return nil, nil, err
	}
	cliCert, cliKey, err := ca.Issue("clustral", nil, nil, true)
	if err != nil {
		return nil, nil, err
	}
	t := &EtcdTLS{
		CAFile:         filepath.Join(dir, "etcd-ca.pem"),
		ClientCertFile: filepath.Join(dir, "etcd-client.pem"),
		ClientKeyFile:  filepath.Join(dir, "etcd-client-key.pem"),
	}
	srv := etcdServerTLS{certFile: filepath.Join(dir, "etcd-server.pem"), keyFile: filepath.Join(dir, "etcd-server-key.pem"), ca: ca, client: t}
	err = writeFiles(map[string][]byte{
		t.CAFile: ca.CertPEM, t.ClientCertFile: cliCert, t.ClientKeyFile: cliKey,
		srv.certFile: srvCert, srv.keyFile: srvKey,
	})
	if err != nil {
		return nil, nil, err
	}
	e, err := startEtcd(ctx, dir, &srv)
	if err != nil {
		return nil, nil, err
	}
	return e, t, nil
}

type etcdServerTLS struct {
	certFile, keyFile string
	ca                *CA
	client            *EtcdTLS
}

func startEtcd(ctx context.Context, dir string, st *etcdServerTLS) (*Etcd, error) {
	bin, err := Binary("etcd")
	if err != nil {
		return nil, err
	}
	e := &Etcd{LogPath: filepath.Join(dir, "etcd.log")}
	hc := &http.Client{Timeout: 2 * time.Second}
	scheme := "http://"
	if st != nil {
		scheme = "https://"
		cert, err := tls.LoadX509KeyPair(st.client.ClientCertFile, st.client.ClientKeyFile)
		if err != nil {
			return nil, err
		}
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: st.ca.Pool(), Certificates: []tls.Certificate{cert}}}
	}
	err = onFreePorts(2, func(ports []int) error {
		client := scheme + hostPort(ports[0])
		peer := "http://" + hostPort(ports[1])
		data := filepath.Join(dir, "etcd-data")
		os.RemoveAll(data)
		args := etcdMemberArgs("default", data, client, peer, "default="+peer)
		if st != nil {
			args = append(args, "--cert-file="+st.certFile, "--key-file="+st.keyFile,
				"--trusted-ca-file="+st.client.CAFile, "--client-cert-auth")
		}
		p, err := StartProcess("etcd", bin, args, EnvironWithout("ETCD_"), e.LogPath)
		if err != nil {
			return err
		}
		if err := p.waitReady(ctx, 30*time.Second, etcdHealthy(hc, client)); err != nil {
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

// etcdMemberArgs returns the flags of etcd member name with its data in
// dir data, serving clients on client and peers on peer, in the cluster
// initial (--initial-cluster's name=peer list), without fsync.
func etcdMemberArgs(name, data, client, peer, initial string) []string {
	return []string{
		"--name=" + name,
		"--data-dir=" + data,
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=" + initial,
		"--unsafe-no-fsync",
		"--log-level=warn",
	}
}

// EtcdCluster is a multi-member etcd cluster serving plain HTTP on
// 127.0.0.1, each member in its own process.
type EtcdCluster struct {
	// URLs are the members' client URLs, in member order.
	URLs []string

	members []*Process
}

// StartEtcdCluster starts an n-member etcd cluster with its data under
// dir and waits until every member is healthy (which needs a leader). The
// caller must call Close.
func StartEtcdCluster(ctx context.Context, dir string, n int) (*EtcdCluster, error) {
	bin, err := Binary("etcd")
	if err != nil {
		return nil, err
	}
	c := &EtcdCluster{}
	err = onFreePorts(2*n, func(ports []int) error {
		names := make([]string, n)
		clients := make([]string, n)
		peers := make([]string, n)
		initial := make([]string, n)
		for i := range n {
			names[i] = fmt.Sprintf("m%d", i)
			clients[i] = "http://" + hostPort(ports[2*i])
			peers[i] = "http://" + hostPort(ports[2*i+1])
			initial[i] = names[i] + "=" + peers[i]
		}
		var members []*Process
		stopAll := func() {
			for _, p := range members {
				p.Stop()
			}
		}
		for i := range n {
			data := filepath.Join(dir, "etcd-"+names[i])
			os.RemoveAll(data)
			args := append(etcdMemberArgs(names[i], data, clients[i], peers[i], strings.Join(initial, ",")),
				"--initial-cluster-state=new", "--initial-cluster-token=clustral-test")
			p, err := StartProcess("etcd-"+names[i], bin, args, EnvironWithout("ETCD_"), filepath.Join(dir, "etcd-"+names[i]+".log"))
			if err != nil {
				stopAll()
				return err
			}
			members = append(members, p)
		}
		hc := &http.Client{Timeout: 2 * time.Second}
		for i, p := range members {
			if err := p.waitReady(ctx, 60*time.Second, etcdHealthy(hc, clients[i])); err != nil {
				stopAll()
				return err
			}
		}
		c.URLs, c.members = clients, members
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("start etcd cluster: %w", err)
	}
	return c, nil
}

// Pid returns member i's process id.
func (c *EtcdCluster) Pid(i int) int { return c.members[i].Pid() }

// Kill kills member i with SIGKILL, as a crash would.
func (c *EtcdCluster) Kill(i int) { c.members[i].Kill() }

// Close stops every member.
func (c *EtcdCluster) Close() error {
	for _, p := range c.members {
		p.Stop()
	}
	return nil
}

// etcdHealthy is a readiness check (see Process.Wait): the etcd member
// at url reports itself healthy.
func etcdHealthy(c *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		b, err := getOK(ctx, c, url+"/health", nil)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), `"health":"true"`) {
			return fmt.Errorf("unhealthy: %s", b)
		}
		return nil
	}
}

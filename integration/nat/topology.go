// Package nat runs clustral across NATs built out of network namespaces:
// a laptop and a cluster, each on its own private LAN behind a router that
// masquerades with nftables, and a core namespace that routes between the
// routers and hosts the coordinator, as the internet and a public server
// would. Every address lives in a namespace the Topology creates; the
// host's own interfaces and routes are never touched.
//
// The tests of this package are the acceptance tests of NAT traversal:
// direct paths through two NATs, the relay when UDP is blocked, and a watch
// that lives through path changes. The bench uses the same topology.
package nat

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Public is the coordinator's public address, on the core namespace's
// loopback, routed to by both routers.
var Public = netip.MustParseAddr("192.168.0.1")

// Topology is a set of network namespaces:
//
//	laptop 10.201.0.2 ─ 10.201.0.1 laptop router 192.168.1.2 ─┐
//	                                                          core 192.168.0.1
//	cluster 10.202.0.2 ─ 10.202.0.1 cluster router 192.168.2.2 ─┘
//
// The routers masquerade what they forward to core and drop what comes
// unsolicited from core to themselves; core forwards between the routers.
// No LAN is routed from outside, so a packet reaches the laptop or the
// cluster from core only as the reply of a flow they opened.
//
// A Topology is not safe for concurrent use; its fields are namespace
// names, and it can be passed to a child process as JSON.
type Topology struct {
	Core          string `json:"core"`
	Laptop        string `json:"laptop"`
	Cluster       string `json:"cluster"`
	LaptopRouter  string `json:"laptop_router"`
	ClusterRouter string `json:"cluster_router"`
}

// blockTable is the nftables table of BlockUDP, removed by UnblockUDP.
const blockTable = "clustral_block"

// Supported returns why this machine cannot build a Topology, or nil.
func Supported() error {
	if os.Getuid() != 0 {
		return errors.New("NAT topologies need root to create network namespaces")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed (iproute2, nftables)", bin)
		}
	}
	return nil
}

// NewTopology creates the namespaces, links, addresses, routes and NAT
// rules. On error it removes whatever it created. The caller must call
// Close.
func NewTopology() (*Topology, error) {
	var b [4]byte
	rand.Read(b[:])
	p := "clustral-nat-" + hex.EncodeToString(b[:]) + "-"
	t := &Topology{Core: p + "core", Laptop: p + "laptop", Cluster: p + "cluster", LaptopRouter: p + "rlaptop", ClusterRouter: p + "rcluster"}
	if err := t.build(); err != nil {
		return nil, errors.Join(err, t.Close())
	}
	return t, nil
}

func (t *Topology) namespaces() []string {
	return []string{t.Laptop, t.Cluster, t.LaptopRouter, t.ClusterRouter, t.Core}
}

func (t *Topology) build() error {
	var cmds [][]string
	ip := func(args ...string) { cmds = append(cmds, append([]string{"ip"}, args...)) }
	in := func(ns string, args ...string) {
		cmds = append(cmds, append([]string{"ip", "netns", "exec", ns}, args...))
	}
	for _, ns := range t.namespaces() {
		ip("netns", "add", ns)
		ip("-n", ns, "link", "set", "lo", "up")
	}
	ip("-n", t.Core, "addr", "add", Public.String()+"/32", "dev", "lo")
	in(t.Core, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for i, side := range []struct{ host, router string }{{t.Laptop, t.LaptopRouter}, {t.Cluster, t.ClusterRouter}} {
		wan := fmt.Sprintf("192.168.%d.", i+1)
		lan := fmt.Sprintf("10.%d.0.", 201+i)
		coreIf := fmt.Sprintf("wan%d", i+1)
		// router wan <-> core
		ip("link", "add", "wan", "netns", side.router, "type", "veth", "peer", "name", coreIf, "netns", t.Core)
		ip("-n", t.Core, "addr", "add", wan+"1/30", "dev", coreIf)
		ip("-n", t.Core, "link", "set", coreIf, "up")
		ip("-n", side.router, "addr", "add", wan+"2/30", "dev", "wan")
		ip("-n", side.router, "link", "set", "wan", "up")
		ip("-n", side.router, "route", "add", "default", "via", wan+"1")
		// host eth0 <-> router lan
		ip("link", "add", "lan", "netns", side.router, "type", "veth", "peer", "name", "eth0", "netns", side.host)
		ip("-n", side.router, "addr", "add", lan+"1/24", "dev", "lan")
		ip("-n", side.router, "link", "set", "lan", "up")
		ip("-n", side.host, "addr", "add", lan+"2/24", "dev", "eth0")
		ip("-n", side.host, "link", "set", "eth0", "up")
		ip("-n", side.host, "route", "add", "default", "via", lan+"1")
		in(side.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		in(side.router, "nft", "add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; add rule ip nat post oifname wan masquerade")
		// A home router's firewall: nothing unsolicited from the internet
		// reaches the router itself. Without it, a peer's ping that
		// arrives before the router's own host has pinged out leaves a
		// conntrack entry for the router, and the host's ping then gets
		// another source port, so no hole is ever punched.
		in(side.router, "nft", "add table ip filter; add chain ip filter input { type filter hook input priority 0; }; add rule ip filter input iifname wan ct state new drop")
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// BlockUDP makes router drop every UDP datagram it would forward, either
// way; TCP still passes. router is t.LaptopRouter or t.ClusterRouter.
func (t *Topology) BlockUDP(router string) error {
	return nft(router, "add table ip "+blockTable+"; add chain ip "+blockTable+" forward { type filter hook forward priority 0; }; add rule ip "+blockTable+" forward meta l4proto udp drop")
}

// UnblockUDP undoes BlockUDP.
func (t *Topology) UnblockUDP(router string) error {
	return nft(router, "delete table ip "+blockTable)
}

func nft(ns, script string) error {
	if out, err := exec.Command("ip", "netns", "exec", ns, "nft", script).CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %q: %v: %s", ns, script, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// EnvTopology is the environment variable that hands a Topology to a
// process re-executed inside it (see Environ and FromEnv).
const EnvTopology = "CLUSTRAL_NAT_TOPOLOGY"

// Environ returns the EnvTopology=... entry describing t.
func (t *Topology) Environ() string {
	b, _ := json.Marshal(t)
	return EnvTopology + "=" + string(b)
}

// FromEnv returns the Topology named by $CLUSTRAL_NAT_TOPOLOGY, and false
// when it is not set (the process is not running inside a Topology).
func FromEnv() (*Topology, bool) {
	v := os.Getenv(EnvTopology)
	if v == "" {
		return nil, false
	}
	var t Topology
	if err := json.Unmarshal([]byte(v), &t); err != nil || t.Core == "" {
		return nil, false
	}
	return &t, true
}

// Close kills every process left in the namespaces and removes them. It
// reports namespaces that could not be removed.
func (t *Topology) Close() error {
	var errs []error
	for _, ns := range t.namespaces() {
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				var pid int
				if _, err := fmt.Sscan(f, &pid); err == nil && pid != os.Getpid() {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	for _, ns := range t.namespaces() {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	for _, ns := range t.namespaces() {
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == ns {
				errs = append(errs, fmt.Errorf("network namespace %s still exists", ns))
			}
		}
	}
	return errors.Join(errs...)
}

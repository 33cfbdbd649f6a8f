package device

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/clustral/clustral/node/dns"
	"github.com/clustral/clustral/node/mesh"
	"github.com/clustral/clustral/pkg/atomicfile"
)

// DNSMethod says how `clustral up --tun` points the system's resolver at
// the mesh DNS.
type DNSMethod string

const (
	// DNSOff serves no mesh DNS: mesh names resolve in the SOCKS5 proxy
	// only.
	DNSOff DNSMethod = "off"
	// DNSAuto is DNSResolved when systemd-resolved manages the system's
	// DNS (resolv.conf points at its stub), else DNSResolvConf.
	DNSAuto DNSMethod = "auto"
	// DNSResolved makes the mesh domain a routing domain of the TUN link
	// in systemd-resolved (split DNS): only mesh names go to the mesh
	// DNS. resolved forgets it when the link goes away.
	DNSResolved DNSMethod = "resolved"
	// DNSResolvConf adds the mesh DNS as the first nameserver of
	// resolv.conf, in a marked block. It is not split: every name is
	// asked there first, and names outside the mesh domain are refused,
	// so resolvers go on to the file's other nameservers.
	DNSResolvConf DNSMethod = "resolv.conf"
)

// ParseDNSMethod checks a --dns-method value.
func ParseDNSMethod(s string) (DNSMethod, error) {
	switch m := DNSMethod(s); m {
	case DNSOff, DNSAuto, DNSResolved, DNSResolvConf:
		return m, nil
	}
	return "", fmt.Errorf("unknown DNS method %q: use auto, resolved (systemd-resolved), resolv.conf or off", s)
}

// DNSFile (in the profile directory) records the change the running
// device made to the system's resolver, written before the change, so
// that the next clustral up or clustral down undoes it after a crash
// (RestoreDNS).
const DNSFile = "dns.json"

// DefaultResolvConf is the file the resolv.conf method edits.
const DefaultResolvConf = "/etc/resolv.conf"

// resolvedStub is the address of systemd-resolved's stub resolver.
const resolvedStub = "127.0.0.53"

// DNSState is the mesh DNS of a running device, in its State and DNSFile.
type DNSState struct {
	// Method is how the system's resolver was pointed at it:
	// DNSResolved or DNSResolvConf.
	Method DNSMethod `json:"method"`
	// Server is the mesh DNS's address (UDP and TCP port 53), Domain the
	// names it answers.
	Server string `json:"server"`
	Domain string `json:"domain"`
	// Link is the TUN link configured in systemd-resolved.
	Link string `json:"link,omitempty"`
	// ResolvConf is the resolv.conf method's edit.
	ResolvConf *resolvConfEdit `json:"resolv_conf,omitempty"`
	// PID is the device that made the change.
	PID int `json:"pid"`
}

// Describe says where the mesh DNS is and how the system reaches it.
func (s *DNSState) Describe() string {
	how := "systemd-resolved, link " + s.Link
	if s.Method == DNSResolvConf && s.ResolvConf != nil {
		how = "first nameserver in " + s.ResolvConf.File
	}
	return fmt.Sprintf("*.%s at %s (%s)", s.Domain, s.Server, how)
}

// resolvectl runs systemd-resolved's resolvectl; tests replace it.
var resolvectl = func(args ...string) error {
	out, err := exec.Command("resolvectl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("resolvectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// haveResolvectl says whether resolvectl is installed; tests replace it.
var haveResolvectl = func() bool {
	_, err := exec.LookPath("resolvectl")
	return err == nil
}

// resolvedManages says whether systemd-resolved answers the system's
// queries: resolv.conf is one of its files, or names its stub.
func resolvedManages(resolvConf string) bool {
	if t, err := filepath.EvalSymlinks(resolvConf); err == nil && strings.HasPrefix(t, "/run/systemd/resolve/") {
		return true
	}
	b, err := os.ReadFile(resolvConf)
	if err != nil {
		return false
	}
	for l := range strings.Lines(string(b)) {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "nameserver" && f[1] == resolvedStub {
			return true
		}
	}
	return false
}

// meshZone is the mesh DNS's view of the map: the names Mesh.Resolve
// gives, with every overlay address of the cluster's agents, best agent
// first.
type meshZone struct{ m *mesh.Mesh }

func (z meshZone) Domain() string { return strings.ToLower(z.m.Node.MeshDomain()) }

func (z meshZone) Lookup(name string) ([]netip.Addr, error) {
	if _, synced := z.m.Node.Version(); !synced {
		return nil, errors.New("no network map yet")
	}
	_, agents, err := z.m.Resolve(name)
	var na *mesh.NoAgentError
	var nm *mesh.NotMeshNameError
	if errors.As(err, &na) || errors.As(err, &nm) {
		return nil, dns.ErrNoSuchName
	}
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range agents {
		for _, p := range a.Addresses {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}

// serveDNS serves the mesh DNS on the device's IPv4 overlay address, port
// 53, UDP and TCP, answering only this machine's own programs, and points
// the system's resolver at it by cfg.DNS. stop undoes both.
func (d *device) serveDNS(ctx context.Context) error {
	var server netip.Addr
	for _, p := range d.reg.Addresses {
		if p.Addr().Is4() {
			server = p.Addr()
			break
		}
	}
	if !server.IsValid() {
		return errors.New("mesh DNS: the registration gave no IPv4 overlay address to serve on (run clustral up --tun --dns=false)")
	}
	ap := netip.AddrPortFrom(server, 53)
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return fmt.Errorf("mesh DNS: listen on %s/udp: %w (another DNS server may hold port 53 on every address; stop it, or run clustral up --tun --dns=false)", ap, err)
	}
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		pc.Close()
		return fmt.Errorf("mesh DNS: listen on %s/tcp: %w (another DNS server may hold port 53 on every address; stop it, or run clustral up --tun --dns=false)", ap, err)
	}
	// Programs on this machine ask from the address itself (or from
	// loopback); the mesh cannot reach it (the reply filter), and the
	// kernel drops packets from outside that claim a local source.
	srv := &dns.Server{
		Zone:   meshZone{d.mesh},
		Allow:  func(src netip.Addr) bool { return src == server || src.IsLoopback() },
		Logger: d.log,
	}
	ctx, cancel := context.WithCancel(ctx)
	d.stopDNSServer = cancel
	d.wg.Go(func() {
		if err := srv.Serve(ctx, pc, l); err != nil {
			d.log.Error("mesh DNS stopped", "err", err)
		}
	})

	st := &DNSState{Server: server.String(), Domain: strings.ToLower(d.reg.MeshDomain), PID: os.Getpid()}
	if err := configureDNS(d.cfg, st); err != nil {
		if _, serr := os.Stat(filepath.Join(d.cfg.Dir, DNSFile)); serr == nil {
			d.dnsState = st // partly done: stop undoes it
		}
		return err
	}
	d.dnsState = st
	d.log.Info("mesh DNS", "names", "*."+st.Domain, "server", st.Server, "method", st.Method)
	return nil
}

// configureDNS points the system's resolver at st.Server for st.Domain,
// by cfg.DNS, recording in DNSFile what it changes before it changes it.
func configureDNS(cfg Config, st *DNSState) error {
	resolvConf := cmp.Or(cfg.ResolvConf, DefaultResolvConf)
	method := cfg.DNS
	if method == DNSAuto {
		method = DNSResolvConf
		if haveResolvectl() && resolvedManages(resolvConf) {
			method = DNSResolved
		}
	}
	st.Method = method
	record := func() error { return atomicfile.WriteJSON(filepath.Join(cfg.Dir, DNSFile), st, 0o600) }
	switch method {
	case DNSResolved:
		if !haveResolvectl() {
			return errors.New("mesh DNS: --dns-method resolved needs systemd-resolved's resolvectl, which is not installed: use --dns-method resolv.conf, or --dns=false")
		}
		st.Link = mesh.TUNName
		if err := record(); err != nil {
			return fmt.Errorf("mesh DNS: record the change: %w", err)
		}
		for _, args := range [][]string{
			{"dns", st.Link, st.Server},
			{"domain", st.Link, "~" + st.Domain},
			{"default-route", st.Link, "false"},
		} {
			if err := resolvectl(args...); err != nil {
				return fmt.Errorf("mesh DNS: %w (is systemd-resolved running? or use --dns-method resolv.conf, or --dns=false)", err)
			}
		}
	case DNSResolvConf:
		err := addResolvConf(resolvConf, st.Server, st.Domain, func(e resolvConfEdit) error {
			st.ResolvConf = &e
			return record()
		})
		if err != nil {
			return fmt.Errorf("mesh DNS: %w", err)
		}
	default:
		return fmt.Errorf("mesh DNS: method %q is not one clustral up can configure", method)
	}
	return nil
}

// unconfigureDNS undoes what st records and removes DNSFile.
func unconfigureDNS(dir string, st *DNSState) (string, error) {
	var done string
	switch {
	case st.Method == DNSResolved:
		// resolved drops a link's settings when the link goes; revert
		// them in case it is still there.
		if _, err := net.InterfaceByName(st.Link); err == nil {
			if err := resolvectl("revert", st.Link); err != nil {
				return "", err
			}
		}
		done = "reverted the mesh DNS settings of link " + st.Link + " in systemd-resolved"
	case st.ResolvConf != nil:
		var err error
		if done, err = removeResolvConf(*st.ResolvConf, st.Server); err != nil {
			return "", err
		}
	}
	if err := os.Remove(filepath.Join(dir, DNSFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return done, nil
}

// stopDNS undoes the system's resolver change and stops the mesh DNS.
func (d *device) stopDNS() {
	if d.dnsState != nil {
		if done, err := unconfigureDNS(d.cfg.Dir, d.dnsState); err != nil {
			d.log.Error("restore the system's DNS", "err", err)
		} else {
			d.log.Info("restored the system's DNS", "done", done)
		}
	}
	if d.stopDNSServer != nil {
		d.stopDNSServer()
	}
}

// RestoreDNS undoes the resolver change recorded in the profile
// directory dir by a device that is gone (killed, crashed), and reports
// what it did; "" when there was nothing to do. A record of a device
// that still runs is left alone, with an error.
func RestoreDNS(dir string) (string, error) {
	var st DNSState
	if err := atomicfile.ReadJSON(filepath.Join(dir, DNSFile), &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("read %s: %w (remove it once the system's DNS is as you want it)", filepath.Join(dir, DNSFile), err)
	}
	if st.PID != os.Getpid() && Alive(st.PID) {
		return "", fmt.Errorf("the mesh DNS is configured by clustral up (pid %d), which still runs: stop it with clustral down", st.PID)
	}
	return unconfigureDNS(dir, &st)
}

// LeftoverDNS returns the resolver change recorded in dir by a device
// that is gone, nil if none.
func LeftoverDNS(dir string) *DNSState {
	var st DNSState
	if atomicfile.ReadJSON(filepath.Join(dir, DNSFile), &st) != nil {
		return nil
	}
	if Alive(st.PID) {
		return nil
	}
	return &st
}

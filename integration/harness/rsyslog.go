package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Rsyslog is a real rsyslogd (Debian's rsyslog and rsyslog-gnutls)
// receiving syslog over TLS (imtcp with the gtls driver, RFC 5425
// octet-counted framing) on a loopback port, and writing each message it
// parsed as one JSON line to a file. Stop and Start stop and restart it
// on the same port, keeping the file. Methods are not safe for concurrent
// use.
type Rsyslog struct {
	// Addr is 127.0.0.1:<port>.
	Addr string
	// CA signed rsyslogd's serving certificate (for 127.0.0.1).
	CA *CA
	// Out is the file rsyslogd writes the messages to.
	Out string

	bin, dir, conf string
	proc           *Process
}

// RsyslogMessage is one message as rsyslogd parsed it.
type RsyslogMessage struct {
	Facility       string `json:"facility"`
	Severity       string `json:"severity"`
	Hostname       string `json:"hostname"`
	AppName        string `json:"app"`
	MsgID          string `json:"msgid"`
	StructuredData string `json:"sd"`
	Msg            string `json:"msg"`
	Protocol       string `json:"protocol"`
}

// ErrNoRsyslog says rsyslogd is not installed.
var ErrNoRsyslog = errors.New("rsyslogd not found: apt-get install rsyslog rsyslog-gnutls (.ci/run does)")

// StartRsyslog writes a configuration under dir and starts rsyslogd with
// it; the caller must call Stop.
func StartRsyslog(ctx context.Context, dir string) (*Rsyslog, error) {
	bin, err := exec.LookPath("rsyslogd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/rsyslogd"); serr != nil {
			return nil, ErrNoRsyslog
		}
		bin = "/usr/sbin/rsyslogd"
	}
	if m, _ := filepath.Glob("/usr/lib/*/rsyslog/lmnsd_gtls.so"); len(m) == 0 {
		return nil, ErrNoRsyslog
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	ca, err := NewCA("rsyslog CA")
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.Issue("rsyslog", nil, []string{"127.0.0.1"}, false)
	if err != nil {
		return nil, err
	}
	work := filepath.Join(dir, "work")
	if err := os.MkdirAll(work, 0o700); err != nil {
		return nil, err
	}
	files := map[string][]byte{"ca.pem": ca.CertPEM, "cert.pem": certPEM, "key.pem": keyPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	r := &Rsyslog{Addr: hostPort(port), CA: ca, Out: filepath.Join(dir, "messages.jsonl"), bin: bin, dir: dir, conf: filepath.Join(dir, "rsyslog.conf")}
	conf := fmt.Sprintf(`global(
  workDirectory="%[1]s/work"
  maxMessageSize="256k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="%[1]s/ca.pem"
  defaultNetstreamDriverCertFile="%[1]s/cert.pem"
  defaultNetstreamDriverKeyFile="%[1]s/key.pem"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
template(name="json" type="list" option.jsonf="on") {
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="protocol" name="protocol-version" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}
ruleset(name="siem") {
  action(type="omfile" file="%[1]s/messages.jsonl" template="json")
}
input(type="imtcp" address="127.0.0.1" port="%[2]d" ruleset="siem")
`, dir, port)
	if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return r, r.Start(ctx)
}

// Start starts rsyslogd (again) and waits until it accepts connections.
func (r *Rsyslog) Start(ctx context.Context) error {
	args := []string{"-n", "-f", r.conf, "-i", filepath.Join(r.dir, "rsyslogd.pid")}
	p, err := StartProcess("rsyslogd", r.bin, args, []string{ownerEntry}, filepath.Join(r.dir, "rsyslogd.log"))
	if err != nil {
		return err
	}
	r.proc = p
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = p.Wait(wctx, func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.Addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		p.Stop()
		return fmt.Errorf("rsyslogd not listening on %s: %w", r.Addr, err)
	}
	return nil
}

// Stop stops rsyslogd; what it received stays in Out.
func (r *Rsyslog) Stop() {
	if r.proc != nil {
		r.proc.Stop()
	}
}

// Pid is the running rsyslogd's process id.
func (r *Rsyslog) Pid() int { return r.proc.Pid() }

// Tail returns the last lines of rsyslogd's own log.
func (r *Rsyslog) Tail(n int) string { return r.proc.Tail(n) }

// Messages reads what rsyslogd has written so far, in order.
func (r *Rsyslog) Messages() ([]RsyslogMessage, error) {
	b, err := os.ReadFile(r.Out)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []RsyslogMessage
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var m RsyslogMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			// A line being written when the file was read.
			if !bytes.HasSuffix(b, []byte("\n")) {
				break
			}
			return nil, fmt.Errorf("%s line %d: %w", r.Out, n, err)
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

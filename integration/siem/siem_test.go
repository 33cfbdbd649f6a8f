package siem

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/clustral/clustral/coordinator/auditexport/otlptest"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// otlpToken is the bearer token the coordinator reads from its headers
// file and the receiver requires.
const otlpToken = "otlp-token-0123456789"

// otlpReceiver is an OTLP/HTTP logs receiver over TLS in the test
// process. It decodes each request with the official OTLP protobuf types,
// checks every record, and keeps the sequence numbers in the order they
// arrived. Down closes its listener (connections are refused) and Up
// opens it again on the same address.
type otlpReceiver struct {
	t    *testing.T
	addr string
	cert tls.Certificate

	mu       sync.Mutex
	seqs     []uint64
	problems []string
	srv      *http.Server
	wg       sync.WaitGroup
}

func startOTLPReceiver(t *testing.T, ca *harness.CA) *otlpReceiver {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue("otlp", nil, []string{"127.0.0.1"}, false)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{t: t, addr: "127.0.0.1:" + strconv.Itoa(port), cert: cert}
	r.Up()
	t.Cleanup(r.Down)
	return r
}

// Up serves on the receiver's address.
func (r *otlpReceiver) Up() {
	r.t.Helper()
	l, err := tls.Listen("tcp", r.addr, &tls.Config{Certificates: []tls.Certificate{r.cert}})
	if err != nil {
		r.t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	r.wg.Go(func() { srv.Serve(l) })
}

// Down stops serving: new connections are refused, open ones closed.
func (r *otlpReceiver) Down() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
	r.wg.Wait()
}

func (r *otlpReceiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Header.Get("Authorization") != "Bearer "+otlpToken {
		http.Error(w, "no token", http.StatusUnauthorized)
		return
	}
	m, ok := otlptest.Receive(w, req)
	if !ok {
		return
	}
	var seqs []uint64
	var problems []string
	for _, rl := range m.ResourceLogs {
		service := ""
		for _, a := range rl.GetResource().GetAttributes() {
			if a.Key == "service.name" {
				service = a.Value.GetStringValue()
			}
		}
		for _, sl := range rl.ScopeLogs {
			for _, rec := range sl.LogRecords {
				attrs := map[string]string{}
				var seq uint64
				for _, a := range rec.Attributes {
					attrs[a.Key] = a.Value.GetStringValue()
					if a.Key == "clustral.audit.seq" {
						seq = uint64(a.Value.GetIntValue())
					}
				}
				var e proto.AuditEvent
				jerr := json.Unmarshal([]byte(rec.Body.GetStringValue()), &e)
				wantSev := map[string]string{"I": "SEVERITY_NUMBER_INFO", "W": "SEVERITY_NUMBER_WARN", "E": "SEVERITY_NUMBER_ERROR"}[proto.AuditCode(attrs["clustral.audit.code"]).Severity()]
				if service != "clustral-coordinator" || seq == 0 || jerr != nil || e.Seq != seq || string(e.Code) != attrs["clustral.audit.code"] ||
					e.Hash != attrs["clustral.audit.hash"] || rec.TimeUnixNano != uint64(e.Time.UnixNano()) || rec.SeverityNumber.String() != wantSev {
					problems = append(problems, fmt.Sprintf("record service %q seq %d severity %v attributes %v body %q (%v)", service, seq, rec.SeverityNumber, attrs, rec.Body.GetStringValue(), jerr))
				}
				seqs = append(seqs, seq)
			}
		}
	}
	r.mu.Lock()
	r.seqs = append(r.seqs, seqs...)
	r.problems = append(r.problems, problems...)
	r.mu.Unlock()
	otlptest.Answer(w, nil)
}

func (r *otlpReceiver) received() ([]uint64, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.seqs...), append([]string(nil), r.problems...)
}

var sdSeq = regexp.MustCompile(`\bseq="(\d+)"`)

// syslogSeqs reads what rsyslogd wrote: the sequence numbers in the
// order they arrived, and whatever is wrong with a message (fields as
// rsyslogd parsed them against the JSON event in its MSG).
func syslogSeqs(t *testing.T, r *harness.Rsyslog) ([]uint64, []string) {
	t.Helper()
	msgs, err := r.Messages()
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	var problems []string
	for _, m := range msgs {
		var e proto.AuditEvent
		jerr := json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimSpace(m.Msg), "\ufeff")), &e)
		sd := sdSeq.FindStringSubmatch(m.StructuredData)
		wantSev := map[string]string{"I": "6", "W": "4", "E": "3"}[e.Code.Severity()]
		if jerr != nil || sd == nil || sd[1] != strconv.FormatUint(e.Seq, 10) || m.MsgID != string(e.Code) || m.Protocol != "1" ||
			m.Facility != "13" || m.Severity != wantSev || m.AppName != "clustral" || m.Hostname != "coord-it" ||
			!strings.Contains(m.StructuredData, `code="`+string(e.Code)+`"`) || !strings.Contains(m.StructuredData, `hash="`+e.Hash+`"`) {
			problems = append(problems, fmt.Sprintf("message %+v (%v)", m, jerr))
			continue
		}
		seqs = append(seqs, e.Seq)
	}
	return seqs, problems
}

// checkDelivered fails the test unless every sequence number from 1 to
// head arrived and they first arrived in order; it returns how many
// arrived more than once.
func checkDelivered(t *testing.T, who string, seqs []uint64, head uint64) (dups int) {
	t.Helper()
	seen := map[uint64]bool{}
	var last uint64
	for _, s := range seqs {
		if seen[s] {
			dups++
			continue
		}
		if s < last {
			t.Errorf("%s: %d first arrived after %d", who, s, last)
		}
		seen[s], last = true, s
	}
	for s := uint64(1); s <= head; s++ {
		if !seen[s] {
			t.Errorf("%s: event %d never arrived (head %d)", who, s, head)
		}
	}
	return dups
}

// all reports whether every sequence number up to head is in seqs.
func all(seqs []uint64, head uint64) bool {
	seen := map[uint64]bool{}
	for _, s := range seqs {
		seen[s] = true
	}
	for s := uint64(1); s <= head; s++ {
		if !seen[s] {
			return false
		}
	}
	return true
}

// site is a coordinator exporting to an rsyslogd and an OTLP receiver,
// with its administrator logged in.
type site struct {
	t      *testing.T
	coord  *harness.Coordinator
	admin  *harness.User
	syslog *harness.Rsyslog
	otlp   *otlpReceiver
	n      int // clusters created
}

func newSite(t *testing.T) *site {
	t.Helper()
	ctx := t.Context()
	dir := t.TempDir()
	rs, err := harness.StartRsyslog(ctx, filepath.Join(dir, "rsyslog"))
	if errors.Is(err, harness.ErrNoRsyslog) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rs.Stop()
		if t.Failed() {
			t.Logf("rsyslogd log:\n%s", rs.Tail(30))
		}
	})
	otlpCA, err := harness.NewCA("otlp CA")
	if err != nil {
		t.Fatal(err)
	}
	ot := startOTLPReceiver(t, otlpCA)
	files := map[string][]byte{"syslog-ca.pem": rs.CA.CertPEM, "otlp-ca.pem": otlpCA.CertPEM,
		"otlp-headers": []byte("# the receiver's token\nAuthorization: Bearer " + otlpToken + "\n")}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bin, err := harness.ClustralBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := harness.StartCoordinator(ctx, bin, filepath.Join(dir, "coordinator"), harness.CoordinatorOptions{
		Dex: env.Dex, ClientID: oidcClient, ClientSecret: oidcSecret, Admins: []string{admin.Email},
		ExtraArgs: []string{"--stun-listen", "0",
			"--audit-export", "syslog+tls://" + rs.Addr + "?name=siem&hostname=coord-it&retry-max=1s&ca=" + filepath.Join(dir, "syslog-ca.pem"),
			"--audit-export", "otlp+https://" + ot.addr + "/v1/logs?name=otel&retry-max=1s&ca=" + filepath.Join(dir, "otlp-ca.pem") +
				"&headers-file=" + filepath.Join(dir, "otlp-headers"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("coordinator log:\n%s", c.Proc.Tail(60))
		}
	})
	u := harness.NewUser(bin, filepath.Join(dir, "admin"), admin)
	if err := u.LoginWithToken(ctx, env.Dex, oidcClient, oidcSecret, c.URL); err != nil {
		t.Fatal(err)
	}
	return &site{t: t, coord: c, admin: u, syslog: rs, otlp: ot}
}

// events makes n audit events (clusters created) and checks that each
// call was answered promptly.
func (s *site) events(n int) {
	s.t.Helper()
	for range n {
		s.n++
		start := time.Now()
		var out proto.CreateClusterResponse
		if err := s.admin.API(s.t.Context(), s.coord.URL, "POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: fmt.Sprintf("c%d", s.n)}, &out); err != nil {
			s.t.Fatal(err)
		}
		if d := time.Since(start); d > 5*time.Second {
			s.t.Errorf("creating a cluster took %s", d)
		}
	}
}

// head is the sequence number of the newest audit event.
func (s *site) head() uint64 {
	s.t.Helper()
	var p proto.AuditPage
	if err := s.admin.API(s.t.Context(), s.coord.URL, "GET", "/api/v1/audit/events?limit=1", nil, &p); err != nil {
		s.t.Fatal(err)
	}
	if len(p.Events) == 0 {
		return 0
	}
	return p.Events[0].Seq
}

// lag returns the export lag metrics of destination name.
func (s *site) lag(name string) (events, seconds float64) {
	s.t.Helper()
	resp, err := http.Get(s.coord.URL + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	get := func(metric string) float64 {
		for _, m := range mfs[metric].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "destination" && l.GetValue() == name {
					return m.GetGauge().GetValue()
				}
			}
		}
		s.t.Fatalf("no %s{destination=%q}", metric, name)
		return 0
	}
	return get("clustral_coordinator_audit_export_lag_events"), get("clustral_coordinator_audit_export_lag_seconds")
}

// waitDelivered waits until both receivers have every event up to the
// head and the lag metrics are back to zero, and returns the head.
func (s *site) waitDelivered(what string) uint64 {
	s.t.Helper()
	head := s.head()
	testkit.WaitForWithin(s.t, 30*time.Second, what, func() bool {
		sy, _ := syslogSeqs(s.t, s.syslog)
		ot, _ := s.otlp.received()
		return all(sy, head) && all(ot, head)
	})
	testkit.WaitForWithin(s.t, 10*time.Second, what+": lag back to zero", func() bool {
		a, _ := s.lag("siem")
		b, _ := s.lag("otel")
		return a == 0 && b == 0
	})
	return head
}

func (s *site) check(head uint64) (syslogDups, otlpDups int) {
	s.t.Helper()
	sy, problems := syslogSeqs(s.t, s.syslog)
	ot, oproblems := s.otlp.received()
	for _, p := range append(problems, oproblems...) {
		s.t.Error(p)
	}
	return checkDelivered(s.t, "rsyslogd", sy, head), checkDelivered(s.t, "OTLP receiver", ot, head)
}

// TestExportToSyslogAndOTLP: events reach a real rsyslogd and an OTLP
// receiver in order, with their fields; both receivers down for a while
// (the coordinator goes on serving, the lag metrics rise) get every
// event once they are back (the lag falls to zero); a restarted
// coordinator resumes from its cursors, sending nothing it had
// delivered again.
func TestExportToSyslogAndOTLP(t *testing.T) {
	s := newSite(t)
	s.events(10)
	head := s.waitDelivered("first events delivered")
	s.check(head)

	// Both receivers down: the coordinator keeps serving and storing.
	s.syslog.Stop()
	s.otlp.Down()
	s.events(15)
	if err := s.coord.Proc.WaitHTTP(t.Context(), s.coord.URL+"/readyz"); err != nil {
		t.Fatalf("coordinator not ready while the receivers are down: %v", err)
	}
	testkit.WaitForWithin(t, 20*time.Second, "lag metrics rise while the receivers are down", func() bool {
		se, ss := s.lag("siem")
		oe, os := s.lag("otel")
		return se >= 15 && oe >= 15 && ss > 0 && os > 0
	})
	if err := s.syslog.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	s.otlp.Up()
	head = s.waitDelivered("every event delivered after the outage")
	s.check(head)

	// A coordinator restart resumes from the stored cursors: what was
	// taken up to head (the lag was zero after it) is not sent again.
	taken := head
	sy0, _ := syslogSeqs(t, s.syslog)
	ot0, _ := s.otlp.received()
	s.coord.Stop()
	if err := s.coord.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	s.events(5)
	head = s.waitDelivered("events after the restart delivered")
	s.check(head)
	sy, _ := syslogSeqs(t, s.syslog)
	ot, _ := s.otlp.received()
	for _, c := range []struct {
		who         string
		before, all []uint64
	}{{"rsyslogd", sy0, sy}, {"OTLP receiver", ot0, ot}} {
		for _, seq := range c.all[len(c.before):] {
			if seq <= taken {
				t.Errorf("%s: event %d, delivered before the restart, was sent again after it", c.who, seq)
			}
		}
	}
}

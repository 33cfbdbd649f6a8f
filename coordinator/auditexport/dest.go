package auditexport

import (
	"bufio"
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The kinds of destination, named by the scheme of its URL.
const (
	KindSyslog = "syslog" // syslog+tls://host[:6514]
	KindOTLP   = "otlp"   // otlp+https://host[:4318][/v1/logs]
)

// The defaults of a destination's settings.
const (
	DefaultSyslogPort = "6514"
	DefaultOTLPPort   = "4318"
	DefaultOTLPPath   = "/v1/logs"
	DefaultAppName    = "clustral"
	// DefaultSDID is the structured data element of a syslog message. 32473
	// is the enterprise number RFC 5612 sets aside for examples: clustral
	// has none of its own; sd-id= names another.
	DefaultSDID       = "clustral@32473"
	DefaultBatch      = 500
	DefaultRetryMin   = time.Second
	DefaultRetryMax   = 30 * time.Second
	DefaultTimeout    = 10 * time.Second
	DefaultAckWait    = 100 * time.Millisecond
	maxBatch          = 10_000
	maxHeadersFileLen = 64 << 10
)

// Start positions of a destination that has no cursor yet.
const (
	StartOldest = "oldest" // every event the coordinator still keeps
	StartNow    = "now"    // only events stored after it was configured
)

// Destination is one place the audit chain is exported to, parsed from
// its URL by Parse. Secrets (OTLP headers) are read from files or the
// environment when it is parsed, never from the URL, so that they are not
// on the command line.
type Destination struct {
	// Name identifies the destination in metrics, logs and audit events,
	// and keys its cursor in the store: changing it starts the
	// destination afresh. It defaults to the URL without its query.
	Name string
	Kind string
	// Addr is host:port (syslog), Endpoint the OTLP URL without query.
	Addr     string
	Endpoint string
	// TLS is the client configuration: the system roots or the ca= file,
	// and the client certificate of cert= and key= if given.
	TLS *tls.Config

	// Syslog: the APP-NAME, HOSTNAME and SD-ID of each message, and its
	// facility (0-23; default 13, log audit).
	AppName, Hostname, SDID string
	Facility                int

	// Headers are sent with every OTLP request (e.g. Authorization).
	Headers map[string]string

	// Start is where a destination without a cursor begins: StartOldest
	// or StartNow.
	Start string
	// Batch is how many events go in one send; RetryMin and RetryMax
	// bound the back-off after a failure; Timeout bounds one send.
	Batch              int
	RetryMin, RetryMax time.Duration
	Timeout            time.Duration
	// AckWait is how long a syslog connection must stay open after a
	// batch was written before the batch counts as taken (syslog over
	// TLS has no acknowledgement; see syslog.go).
	AckWait time.Duration
}

// params are the query parameters each kind accepts.
var params = map[string][]string{
	KindSyslog: {"name", "ca", "cert", "key", "server-name", "app-name", "hostname", "sd-id", "facility", "start", "batch", "retry-min", "retry-max", "timeout", "ack-wait"},
	KindOTLP:   {"name", "ca", "cert", "key", "server-name", "headers-file", "headers-env", "start", "batch", "retry-min", "retry-max", "timeout"},
}

// Examples of each kind, for error messages.
const (
	exampleSyslog = "syslog+tls://siem.example.com:6514?ca=/etc/clustral/siem-ca.pem"
	exampleOTLP   = "otlp+https://otel.example.com:4318/v1/logs?headers-file=/etc/clustral/otlp-headers"
)

// Parse reads a destination from its URL:
//
//	syslog+tls://host[:port]?ca=FILE&cert=FILE&key=FILE&app-name=NAME&hostname=NAME&sd-id=ID&facility=N
//	otlp+https://host[:port][/path]?ca=FILE&cert=FILE&key=FILE&headers-file=FILE&headers-env=VAR
//
// and, for both, name=NAME, start=oldest|now, batch=N, retry-min=D,
// retry-max=D, timeout=D. Both go over TLS only. It reads the files the URL names, so its errors say what to fix.
func Parse(raw string) (Destination, error) {
	d := Destination{Start: StartOldest, Batch: DefaultBatch, RetryMin: DefaultRetryMin, RetryMax: DefaultRetryMax,
		Timeout: DefaultTimeout, AckWait: DefaultAckWait, AppName: DefaultAppName, SDID: DefaultSDID, Facility: 13}
	fail := func(format string, a ...any) (Destination, error) {
		return Destination{}, fmt.Errorf("audit export %s: %s", redact(raw), fmt.Sprintf(format, a...))
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fail("not a URL (%v): use e.g. %s or %s", unwrapURLError(err), exampleSyslog, exampleOTLP)
	}
	switch u.Scheme {
	case "syslog+tls":
		d.Kind = KindSyslog
	case "otlp+https":
		d.Kind = KindOTLP
	case "otlp+http", "http", "https", "otlp", "otlp+grpc":
		return fail("OTLP is sent over HTTPS: use otlp+https://host:4318/v1/logs")
	case "syslog", "syslog+tcp", "syslog+udp", "tcp", "udp", "tls":
		return fail("syslog is sent only over TLS: use syslog+tls://host:6514")
	default:
		return fail("unknown scheme %q: use syslog+tls://host:6514 or otlp+https://host:4318/v1/logs", u.Scheme)
	}
	if u.User != nil {
		return fail("credentials in the URL would show on the command line and in process listings: put them in a file named by headers-file= (OTLP) or use a client certificate (cert=, key=)")
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return fail("no host: use e.g. %s", map[string]string{KindSyslog: exampleSyslog, KindOTLP: exampleOTLP}[d.Kind])
	}
	if u.Fragment != "" {
		return fail("a URL fragment (#%s) means nothing here: remove it", u.Fragment)
	}
	q := u.Query()
	for k := range q {
		if !slices.Contains(params[d.Kind], k) {
			return fail("unknown setting %q: %s destinations take %s", k, d.Kind, strings.Join(params[d.Kind], ", "))
		}
		if len(q[k]) > 1 {
			return fail("%s is given %d times: give it once", k, len(q[k]))
		}
	}
	host, port := u.Hostname(), u.Port()
	switch d.Kind {
	case KindSyslog:
		if u.Path != "" && u.Path != "/" {
			return fail("syslog takes no path (%q): use syslog+tls://host:port", u.Path)
		}
		d.Addr = net.JoinHostPort(host, cmp.Or(port, DefaultSyslogPort))
		d.Name = "syslog+tls://" + d.Addr
	case KindOTLP:
		path := u.EscapedPath()
		if path == "" || path == "/" {
			path = DefaultOTLPPath
		}
		d.Endpoint = "https://" + net.JoinHostPort(host, cmp.Or(port, DefaultOTLPPort)) + path
		d.Name = u.Scheme + "://" + net.JoinHostPort(host, cmp.Or(port, DefaultOTLPPort)) + path
	}
	if v := q.Get("name"); v != "" {
		if !nameRE().MatchString(v) {
			return fail("name %q: use 1-64 letters, digits, '.', '_', '-', e.g. name=siem", v)
		}
		d.Name = v
	}
	if v := q.Get("start"); v != "" {
		if v != StartOldest && v != StartNow {
			return fail("start=%q: use start=oldest (every event still kept) or start=now", v)
		}
		d.Start = v
	}
	if v := q.Get("batch"); v != "" {
		n, err := parseInt(v, 1, maxBatch)
		if err != nil {
			return fail("batch=%q: %v", v, err)
		}
		d.Batch = n
	}
	for _, p := range []struct {
		key string
		dst *time.Duration
	}{{"retry-min", &d.RetryMin}, {"retry-max", &d.RetryMax}, {"timeout", &d.Timeout}, {"ack-wait", &d.AckWait}} {
		if v := q.Get(p.key); v != "" {
			t, err := time.ParseDuration(v)
			if err != nil || t <= 0 {
				return fail("%s=%q: use a positive duration, e.g. %s=5s", p.key, v, p.key)
			}
			*p.dst = t
		}
	}
	if d.RetryMax < d.RetryMin {
		return fail("retry-max=%s is below retry-min=%s: raise retry-max", d.RetryMax, d.RetryMin)
	}
	if d.TLS, err = tlsConfig(q.Get("ca"), q.Get("cert"), q.Get("key"), cmp.Or(q.Get("server-name"), host)); err != nil {
		return fail("%v", err)
	}
	switch d.Kind {
	case KindSyslog:
		if err := d.syslogSettings(q); err != nil {
			return fail("%v", err)
		}
	case KindOTLP:
		if d.Headers, err = headers(q.Get("headers-file"), q.Get("headers-env")); err != nil {
			return fail("%v", err)
		}
	}
	return d, nil
}

var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`) })

// syslogSettings reads the message header settings of a syslog
// destination and checks them against RFC 5424's grammar.
func (d *Destination) syslogSettings(q url.Values) error {
	if v := q.Get("app-name"); v != "" {
		d.AppName = v
	}
	if v := q.Get("sd-id"); v != "" {
		d.SDID = v
	}
	d.Hostname = q.Get("hostname")
	if d.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "-"
		}
		d.Hostname = h
	}
	if v := q.Get("facility"); v != "" {
		n, err := parseInt(v, 0, 23)
		if err != nil {
			return fmt.Errorf("facility=%q: %v (13 is log audit, 4 auth, 10 authpriv, 16-23 local0-local7)", v, err)
		}
		d.Facility = n
	}
	for _, f := range []struct{ key, v, rule string }{
		{"app-name", d.AppName, "1-48 printable ASCII characters without spaces"},
		{"hostname", d.Hostname, "1-255 printable ASCII characters without spaces"},
		{"sd-id", d.SDID, "1-32 printable ASCII characters without spaces, '=', ']' or '\"', with @ and an enterprise number, e.g. clustral@32473"},
	} {
		limit := map[string]int{"app-name": 48, "hostname": 255, "sd-id": 32}[f.key]
		if len(f.v) > limit || strings.IndexFunc(f.v, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 ||
			f.key == "sd-id" && (strings.ContainsAny(f.v, "=]\"") || !strings.Contains(f.v, "@")) {
			return fmt.Errorf("%s=%q: use %s", f.key, f.v, f.rule)
		}
	}
	return nil
}

// tlsConfig is the client TLS configuration of a destination. The
// server's certificate is always verified: against caFile when given,
// else the system roots.
func tlsConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca=%s: %w", caFile, err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca=%s holds no PEM certificate: give the CA that signed the receiver's certificate", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate needs both cert= and key=")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate cert=%s key=%s: %w", certFile, keyFile, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// headers reads OTLP request headers from a file and from an environment
// variable, both as lines "Name: value" (blank lines and lines starting
// with # are skipped); the variable's lines win.
func headers(file, env string) (map[string]string, error) {
	h := map[string]string{}
	if file != "" {
		fi, err := os.Stat(file)
		if err != nil {
			return nil, fmt.Errorf("headers-file=%s: %w", file, err)
		}
		if fi.Size() > maxHeadersFileLen {
			return nil, fmt.Errorf("headers-file=%s is %d bytes, over %d: it should hold only header lines", file, fi.Size(), maxHeadersFileLen)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("headers-file=%s: %w", file, err)
		}
		if err := parseHeaders(string(b), h); err != nil {
			return nil, fmt.Errorf("headers-file=%s: %w", file, err)
		}
	}
	if env != "" {
		v, ok := os.LookupEnv(env)
		if !ok {
			return nil, fmt.Errorf("headers-env=%s: the variable is not set: export it in the coordinator's environment", env)
		}
		if err := parseHeaders(v, h); err != nil {
			return nil, fmt.Errorf("headers-env=%s: %w", env, err)
		}
	}
	return h, nil
}

// parseHeaders adds the "Name: value" lines of text to h.
func parseHeaders(text string, h map[string]string) error {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 4096), maxHeadersFileLen)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || !validHeaderName(k) {
			return fmt.Errorf("line %d is not a header: write one header a line as Name: value, e.g. Authorization: Bearer <token>", n)
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			return fmt.Errorf("line %d: the value of %s holds a control character", n, k)
		}
		h[http.CanonicalHeaderKey(k)] = v
	}
	return sc.Err()
}

func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if r > '~' || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}

func parseInt(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, errors.New("not a whole number")
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("use %d to %d", lo, hi)
	}
	return n, nil
}

// redact drops the query and any user information from a destination URL
// for error messages: they may name secrets.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		scheme, _, _ := strings.Cut(raw, ":")
		return scheme + ":..."
	}
	u.User, u.RawQuery, u.ForceQuery = nil, "", false
	return u.String()
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

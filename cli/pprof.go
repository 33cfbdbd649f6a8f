package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	"github.com/spf13/pflag"
)

// pprofFlag is the name of the hidden flag of `clustral agent` and
// `clustral up` that serves Go's profiles (net/http/pprof) on a loopback
// address, for measuring the proxy path (integration/cmd/bench
// -profile-dir). It is off unless set.
const pprofFlag = "pprof-listen"

// addPprofFlag adds the hidden --pprof-listen flag to f, bound to addr.
func addPprofFlag(f *pflag.FlagSet, addr *string) {
	f.StringVar(addr, pprofFlag, "", "serve Go's profiles (/debug/pprof/) on this loopback address, e.g. 127.0.0.1:6060 (off by default)")
	f.MarkHidden(pprofFlag)
}

// servePprof serves /debug/pprof/ on addr, which must be a loopback
// address, until ctx is done. An empty addr serves nothing. It returns
// once the listener is bound; the server stops by itself with ctx.
func servePprof(ctx context.Context, addr string, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	if err := checkPprofAddr(addr); err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--%s: %w", pprofFlag, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof server stopped", "err", err)
		}
	}()
	log.Info("serving Go profiles", "addr", l.Addr().String())
	return nil
}

// checkPprofAddr fails unless addr is a loopback host:port.
func checkPprofAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usageError{fmt.Errorf("--%s %q: %w (want a loopback host:port such as 127.0.0.1:6060)", pprofFlag, addr, err)}
	}
	// An IP literal: a name such as localhost could resolve elsewhere.
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		return usageError{fmt.Errorf("--%s %q: profiles are served on a loopback address only (127.0.0.1 or [::1]), since they show memory and stacks", pprofFlag, addr)}
	}
	return nil
}

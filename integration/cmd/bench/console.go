package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/auditlog/audittest"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/integration/harness"
)

// The console bench's log and its loads.
const (
	consoleRecords = 1_000_000
	consoleUsers   = 1000
	consoleLoads   = 100
)

// benchConsole measures console_audit_page_p50_ms and _p99_ms: the
// console's audit page, filtered by one user, loaded consoleLoads times
// by a signed-in administrator (a Go HTTP client with Dex's sign-in
// behind it, one keep-alive connection) from a coordinator whose bbolt
// log holds consoleRecords records by consoleUsers users; each load is
// the whole answer, rendered. On the way it measures
// audit_index_build_s: how long auditlog.BuildIndex, which the
// coordinator runs at start on a log written before the index existed,
// takes on that log.
func benchConsole(ctx context.Context) error {
	dir, err := tempDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := harness.ClustralBinary(dir)
	if err != nil {
		return err
	}
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	coordURL := fmt.Sprintf("http://127.0.0.1:%d", port)

	data := filepath.Join(dir, "coordinator", "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	if err := fillConsoleLog(ctx, filepath.Join(data, "coordinator.db")); err != nil {
		return err
	}

	progress("starting Dex and a coordinator on the filled log")
	dex, err := harness.StartDex(ctx, filepath.Join(dir, "dex"), harness.DexOptions{
		Users:   []harness.DexUser{adminUser},
		Clients: []harness.DexClient{{ID: oidcClient, Secret: oidcSecret, RedirectURIs: []string{coordURL + "/oidc/callback"}}},
	})
	if err != nil {
		return err
	}
	defer dex.Close()
	coord, err := harness.StartCoordinator(ctx, bin, filepath.Join(dir, "coordinator"), harness.CoordinatorOptions{
		Port: port, Dex: dex, ClientID: oidcClient, ClientSecret: oidcSecret, Admins: []string{adminUser.Email},
	})
	if err != nil {
		return err
	}
	defer coord.Stop()
	b := dex.Browser()
	resp, err := b.LoginFollow(ctx, coord.URL+"/signin/start", adminUser.Email, adminUser.Password)
	if err != nil {
		return fmt.Errorf("console sign-in: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("console sign-in ended with %s at %s", resp.Status, resp.Request.URL)
	}
	user := audittest.User(7)
	page := coord.URL + "/admin/audit?" + url.Values{"user": {user}}.Encode()
	load := func() (time.Duration, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", page, nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		resp, err := b.Client.Do(req)
		if err != nil {
			return 0, err
		}
		var buf bytes.Buffer
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		body := buf.Bytes()
		took := time.Since(start)
		if err != nil {
			return 0, err
		}
		// The filter's field names the user once; their events, more.
		if resp.StatusCode != http.StatusOK || strings.Count(string(body), user) < 2 {
			return 0, fmt.Errorf("audit page: %s, %d bytes, %d mentions of %s (want a page of their events)", resp.Status, len(body), strings.Count(string(body), user), user)
		}
		return took, nil
	}
	for range 5 { // warm-up
		if _, err := load(); err != nil {
			return err
		}
	}
	samples := make([]time.Duration, 0, consoleLoads)
	for range consoleLoads {
		d, err := load()
		if err != nil {
			return err
		}
		samples = append(samples, d)
	}
	report("console_audit_page_p50_ms", ms(percentile(samples, 50)), "ms")
	report("console_audit_page_p99_ms", ms(percentile(samples, 99)), "ms")
	return nil
}

// fillConsoleLog writes consoleRecords records into a new bbolt store at
// path, dated over the three weeks before now, and reports
// audit_index_build_s: BuildIndex over all of them, as on a log written
// before the index existed.
func fillConsoleLog(ctx context.Context, path string) error {
	st, err := store.OpenBolt(path)
	if err != nil {
		return err
	}
	defer st.Close()
	progress("filling the audit log with %d records", consoleRecords)
	start := time.Now()
	step := 2 * time.Second
	if err := audittest.Fill(st, consoleRecords, consoleUsers, 4000, start.Add(-consoleRecords*step), step); err != nil {
		return err
	}
	progress("filled in %s", time.Since(start).Round(time.Millisecond))
	if err := st.Update(func(tx store.Tx) error { return tx.Delete(store.Meta, auditlog.MetaIndex) }); err != nil {
		return err
	}
	start = time.Now()
	n, err := auditlog.BuildIndex(ctx, st, 2000, nil)
	if err != nil {
		return err
	}
	if n != consoleRecords {
		return fmt.Errorf("BuildIndex indexed %d records, want %d", n, consoleRecords)
	}
	report("audit_index_build_s", time.Since(start).Seconds(), "s")
	return nil
}

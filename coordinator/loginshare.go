package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// Logins across replicas. Behind a load balancer the steps of one login
// (start, the browser's return, the confirmation page, the poll or the
// exchange) may each reach another replica. On a shared store a pending
// login is therefore also kept in the store (bucket Logins, under its
// handle's hash) and every replica mirrors it into its login table
// (applyLoginLocked). Each step that may happen once (the callback taking
// the OAuth state, the exchange taking the code, the poll taking a
// confirmed login) is claimed in a store transaction that reads the
// stored login, so two replicas never both take it. On bbolt none of this
// runs: the table is the only copy, as before.

// storedLogin is a pendingLogin as the store keeps it. The ID token is
// kept raw and verified again by the replica that issues the session.
type storedLogin struct {
	Handle    string            `json:"handle"`
	State     string            `json:"state"`
	StateUsed bool              `json:"state_used,omitempty"`
	Nonce     string            `json:"nonce"`
	PKCE      string            `json:"pkce"`
	Challenge string            `json:"challenge"`
	Redirect  string            `json:"redirect,omitempty"`
	UserCode  string            `json:"user_code,omitempty"`
	Device    proto.LoginDevice `json:"device"`
	Source    string            `json:"source"`
	Started   time.Time         `json:"started"`
	Expires   time.Time         `json:"expires"`
	Phase     loginPhase        `json:"phase"`
	IDToken   string            `json:"id_token,omitempty"`
	Who       string            `json:"who,omitempty"`
	Code      string            `json:"code,omitempty"`
	Confirm   string            `json:"confirm,omitempty"`
	CSRF      string            `json:"csrf,omitempty"`
	Attempts  int               `json:"attempts,omitempty"`
	Failure   string            `json:"failure,omitempty"`
}

// stored returns pl as the store keeps it. Called with the table's lock
// held.
func (pl *pendingLogin) stored() storedLogin {
	return storedLogin{Handle: pl.handle, State: pl.state, StateUsed: pl.stateUsed, Nonce: pl.nonce, PKCE: pl.pkce,
		Challenge: pl.challenge, Redirect: pl.redirect, UserCode: pl.userCode, Device: pl.device, Source: pl.source,
		Started: pl.started, Expires: pl.expires, Phase: pl.phase, IDToken: pl.rawIDToken, Who: pl.who, Code: pl.code,
		Confirm: pl.confirm, CSRF: pl.csrf, Attempts: pl.attempts, Failure: pl.failure}
}

// pending returns the login sl describes; its ID token is verified when
// its session is issued (finish).
func (sl storedLogin) pending() *pendingLogin {
	return &pendingLogin{handle: sl.Handle, state: sl.State, stateUsed: sl.StateUsed, nonce: sl.Nonce, pkce: sl.PKCE,
		challenge: sl.Challenge, redirect: sl.Redirect, userCode: sl.UserCode, device: sl.Device, source: sl.Source,
		started: sl.Started, expires: sl.Expires, phase: sl.Phase, rawIDToken: sl.IDToken, who: sl.Who, code: sl.Code,
		confirm: sl.Confirm, csrf: sl.CSRF, attempts: sl.Attempts, failure: sl.Failure}
}

// errLoginTaken says another replica took a login's one-time step first,
// or ended the login.
var errLoginTaken = errors.New("unknown or already used login")

// shareLogin stores pl's current state for the other replicas. It does
// nothing on a store with one writer.
func (s *Server) shareLogin(pl *pendingLogin) error {
	if s.feed == nil {
		return nil
	}
	s.logins.mu.Lock()
	sl := pl.stored()
	s.logins.mu.Unlock()
	if err := s.store.Update(func(tx store.Tx) error { return store.Put(tx, store.Logins, sl.Handle, sl) }); err != nil {
		return fmt.Errorf("share login: %w", err)
	}
	return nil
}

// shareConfirm shares what the confirmation page changed in pl; a
// failure to is logged (the login then ends by expiry on the replicas
// that missed it).
func (s *Server) shareConfirm(pl *pendingLogin) {
	if err := s.shareLogin(pl); err != nil {
		s.log.Error("share a login's confirmation", "err", err)
	}
}

// claimLogin takes one step of login handle that may happen once: inside
// one transaction it reads the stored login, lets ok decide from it
// (false: errLoginTaken), and then deletes it (del) or stores what ok
// left in it. It does nothing on a store with one writer, whose table
// already decided.
func (s *Server) claimLogin(handle string, del bool, ok func(*storedLogin) bool) error {
	if s.feed == nil {
		return nil
	}
	return s.store.Update(func(tx store.Tx) error {
		var sl storedLogin
		if err := store.Get(tx, store.Logins, handle, &sl); errors.Is(err, store.ErrNotFound) {
			return errLoginTaken
		} else if err != nil {
			return err
		}
		if !ok(&sl) {
			return errLoginTaken
		}
		if del {
			return tx.Delete(store.Logins, handle)
		}
		return store.Put(tx, store.Logins, handle, &sl)
	})
}

// forgetLogin deletes login handle from the store, if it is there: the
// login ended without a one-time step (a wrong verifier, a failure
// reported, the expiry). It reports whether this call deleted it.
func (s *Server) forgetLogin(handle string) bool {
	err := s.claimLogin(handle, true, func(*storedLogin) bool { return true })
	if err != nil && !errors.Is(err, errLoginTaken) {
		s.log.Error("forget a shared login", "err", err)
	}
	return err == nil
}

// applyLoginLocked mirrors another replica's change of a pending login
// into the table. Called with s.mu held (the table's lock comes after).
func (s *Server) applyLoginLocked(ch store.Change) error {
	t := s.logins
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.byHandle[ch.Key]; old != nil {
		t.removeLocked(old)
	}
	if ch.Deleted {
		return nil
	}
	var sl storedLogin
	if err := json.Unmarshal(ch.Value, &sl); err != nil {
		return fmt.Errorf("decode login %s: %w", ch.Key, err)
	}
	t.mirrorLocked(sl.pending())
	return nil
}

// findLogin makes sure the table holds the stored login that match
// accepts, if the store has one the table lacks: a step that reaches
// this replica right after another replica started or changed the login
// finds it before this replica's follow applied it. has says whether the
// table already holds it. With key set only that stored login is read;
// else the pending logins are scanned (the routes that do are rate
// limited per source). It does nothing on a store with one writer.
func (s *Server) findLogin(key string, has func(*loginTable) bool, match func(*storedLogin) bool) {
	if s.feed == nil {
		return
	}
	t := s.logins
	t.mu.Lock()
	found := has(t)
	t.mu.Unlock()
	if found {
		return
	}
	var hit *storedLogin
	err := s.store.View(func(tx store.Tx) error {
		if key != "" {
			var sl storedLogin
			if err := store.Get(tx, store.Logins, key, &sl); err != nil {
				return err
			}
			if match(&sl) {
				hit = &sl
			}
			return nil
		}
		return tx.ForEach(store.Logins, func(_ string, raw []byte) error {
			var sl storedLogin
			if err := json.Unmarshal(raw, &sl); err != nil {
				return err
			}
			if match(&sl) {
				hit = &sl
				return errStopScan
			}
			return nil
		})
	})
	if err != nil && !errors.Is(err, errStopScan) && !errors.Is(err, store.ErrNotFound) {
		s.log.Error("look up a shared login", "err", err)
		return
	}
	if hit == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !has(t) {
		if old := t.byHandle[hit.Handle]; old != nil {
			t.removeLocked(old)
		}
		t.mirrorLocked(hit.pending())
	}
}

var errStopScan = errors.New("found")

// mirrorLocked indexes pl, a login as the store holds it, under the names
// its phase answers to. Called with t.mu held.
func (t *loginTable) mirrorLocked(pl *pendingLogin) {
	t.byHandle[pl.handle] = pl
	if !pl.stateUsed {
		t.byState[pl.state] = pl
	}
	if pl.failure == "" && pl.phase == loginAuthenticated {
		if pl.code != "" {
			t.byCode[pl.code] = pl
		}
		if pl.confirm != "" {
			t.byConfirm[pl.confirm] = pl
		}
	}
}

// verifyStoredToken verifies again the ID token of a login whose
// browser returned to another replica.
func (s *Server) verifyStoredToken(pl *pendingLogin) error {
	if pl.idt != nil {
		return nil
	}
	if pl.rawIDToken == "" || s.oidc == nil {
		return errors.New("this login has no ID token; start again with clustral login")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	idt, err := s.oidc.verifier.Verify(s.oidc.ctx(ctx), pl.rawIDToken)
	if err != nil {
		return fmt.Errorf("verify ID token: %w", err)
	}
	pl.idt = idt
	return nil
}

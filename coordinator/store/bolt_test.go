package store

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clustral/clustral/pkg/testkit"
)

type doc struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

func openTest(t *testing.T) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data", "coordinator.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestBoltRoundTripAndPersistence(t *testing.T) {
	s, path := openTest(t)
	err := s.Update(func(tx Tx) error {
		if err := Put(tx, Users, "b", doc{"bob", 2}); err != nil {
			return err
		}
		return Put(tx, Users, "a", doc{"alice", 1})
	})
	if err != nil {
		t.Fatal(err)
	}
	testkit.CheckPerm(t, "store", path, 0o600)
	s.Close()

	s2, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var got []doc
	err = s2.View(func(tx Tx) error {
		var err error
		got, err = List[doc](tx, Users)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "alice" || got[1].Name != "bob" {
		t.Fatalf("after reopen = %+v, want alice, bob in key order", got)
	}
}

func TestBoltUpdateErrorKeepsNothing(t *testing.T) {
	s, _ := openTest(t)
	boom := errors.New("boom")
	err := s.Update(func(tx Tx) error {
		if err := Put(tx, Roles, "r", doc{"r", 1}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	err = s.View(func(tx Tx) error {
		var d doc
		return Get(tx, Roles, "r", &d)
	})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("after failed update Get = %v, want ErrNotFound", err)
	}
}

func TestBoltReadOnlyRefusesWrites(t *testing.T) {
	s, _ := openTest(t)
	err := s.View(func(tx Tx) error { return tx.PutRaw(Meta, "k", []byte("v")) })
	if err == nil {
		t.Fatal("PutRaw in View succeeded")
	}
}

func TestBoltSecondOpenFailsClearly(t *testing.T) {
	_, path := openTest(t)
	_, err := OpenBolt(path)
	if err == nil {
		t.Fatal("second open succeeded")
	}
	if want := "another coordinator holds it"; !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want it to say %q", err, want)
	}
}

func TestBoltBackup(t *testing.T) {
	s, _ := openTest(t)
	if err := s.Update(func(tx Tx) error { return Put(tx, Clusters, "c1", doc{"prod", 1}) }); err != nil {
		t.Fatal(err)
	}
	bak := filepath.Join(t.TempDir(), "backup.db")
	if err := s.Backup(bak); err != nil {
		t.Fatal(err)
	}
	b, err := OpenBolt(bak)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var d doc
	if err := b.View(func(tx Tx) error { return Get(tx, Clusters, "c1", &d) }); err != nil {
		t.Fatal(err)
	}
	if d.Name != "prod" {
		t.Fatalf("restored = %+v", d)
	}
}

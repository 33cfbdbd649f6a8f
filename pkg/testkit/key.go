package testkit

import (
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WireGuardKey returns a fresh WireGuard private key; its public key is
// Key.PublicKey. It fails tb if none can be made.
func WireGuardKey(tb testing.TB) wgtypes.Key {
	tb.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

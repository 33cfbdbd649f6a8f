package proto

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Key is a WireGuard public key. It is encoded as standard base64 on the
// wire, like wg(8) prints it.
type Key wgtypes.Key

// ParseKey parses a base64 WireGuard key.
func ParseKey(s string) (Key, error) {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		return Key{}, fmt.Errorf("parse WireGuard key %q: %w", s, err)
	}
	return Key(k), nil
}

// String returns the base64 form.
func (k Key) String() string { return wgtypes.Key(k).String() }

// ShortString returns a short prefix for logs.
func (k Key) ShortString() string {
	s := k.String()
	return "[" + s[:5] + "]"
}

// Hex returns the lowercase hex form used by WireGuard's UAPI.
func (k Key) Hex() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is the zero key.
func (k Key) IsZero() bool { return k == Key{} }

// MarshalText implements encoding.TextMarshaler.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Key) UnmarshalText(b []byte) error {
	p, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// Duration is a time.Duration encoded as a Go duration string ("1.5s").
type Duration time.Duration

// String formats d as time.Duration does ("1.5s"), as it is encoded.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("parse duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

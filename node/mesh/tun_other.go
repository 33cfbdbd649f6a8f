//go:build !linux

package mesh

import (
	"errors"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun"
)

func openTUN(name string, mtu int, addrs, routes []netip.Prefix) (tun.Device, error) {
	return nil, errors.New("clustral up --tun is supported on Linux only; use clustral up (userspace) here")
}

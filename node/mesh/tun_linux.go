package mesh

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/tun"
)

// openTUN creates the TUN device name with mtu, gives it the node's
// overlay addresses and routes the mesh's prefixes through it. It needs
// CAP_NET_ADMIN. Closing the device removes the link, its addresses and
// its routes.
func openTUN(name string, mtu int, addrs, routes []netip.Prefix) (tun.Device, error) {
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN device %s: %w (clustral up --tun needs root or CAP_NET_ADMIN)", name, err)
	}
	real, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, err
	}
	link, err := netlink.LinkByName(real)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("find %s: %w", real, err)
	}
	fail := func(what string, err error) (tun.Device, error) {
		dev.Close()
		return nil, fmt.Errorf("configure %s: %s: %w", real, what, err)
	}
	for _, a := range addrs {
		host := netip.PrefixFrom(a.Addr(), a.Addr().BitLen())
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(host)}); err != nil {
			return fail("address "+host.String(), err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fail("link up", err)
	}
	for _, r := range routes {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(r.Masked())}); err != nil {
			return fail("route "+r.String(), err)
		}
	}
	return dev, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

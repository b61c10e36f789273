//! Address classes: which IP addresses an outbound request reaches only through a pattern
//! that names them (loopback, private, link-local, shared, cloud-metadata, …), whether they
//! are written in the URL or come from DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16`, `fc00::/7`.
    Private,
    /// `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// `100.64/10` (carrier-grade NAT).
    Shared,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// A cloud provider's instance-metadata service (`169.254.169.254`, `fd00:ec2::254`,
    /// `100.100.100.200`).
    Metadata,
    /// Reserved for documentation, benchmarking or future use (`192.0.0/24`, `192.0.2/24`,
    /// `198.18/15`, `198.51.100/24`, `203.0.113/24`, `240/4`, `2001:db8::/32`).
    Reserved,
}

impl AddressClass {
    /// The class as words.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Shared => "a shared (carrier-grade NAT) address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

/// The class of a non-public address; `None` for a public one. IPv4 addresses written in IPv6
/// (`::ffff:127.0.0.1`, NAT64 `64:ff9b::7f00:1`) are classed as the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        () if ip == Ipv4Addr::new(169, 254, 169, 254)
            || ip == Ipv4Addr::new(100, 100, 100, 200) =>
        {
            AddressClass::Metadata
        }
        () if ip.is_loopback() => AddressClass::Loopback,
        () if ip.is_private() => AddressClass::Private,
        () if ip.is_link_local() => AddressClass::LinkLocal,
        () if a == 100 && (b & 0xc0) == 64 => AddressClass::Shared,
        () if a == 0 => AddressClass::Unspecified,
        () if ip.is_broadcast() => AddressClass::Broadcast,
        () if ip.is_multicast() => AddressClass::Multicast,
        () if a >= 240
            || (a == 192 && b == 0 && (c == 0 || c == 2))
            || (a == 198 && (b & 0xfe) == 18)
            || (a == 198 && b == 51 && c == 100)
            || (a == 203 && b == 0 && c == 113) =>
        {
            AddressClass::Reserved
        }
        () => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let seg = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = seg;
        return classify_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    Some(match () {
        () if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => AddressClass::Metadata,
        () if ip.is_loopback() => AddressClass::Loopback,
        () if ip.is_unspecified() => AddressClass::Unspecified,
        () if (seg[0] & 0xfe00) == 0xfc00 => AddressClass::Private,
        // fe80::/10 link-local, and the deprecated site-local fec0::/10 with it.
        () if (seg[0] & 0xffc0) == 0xfe80 || (seg[0] & 0xffc0) == 0xfec0 => AddressClass::LinkLocal,
        () if ip.is_multicast() => AddressClass::Multicast,
        () if seg[0] == 0x2001 && seg[1] == 0x0db8 => AddressClass::Reserved,
        // IPv4-compatible (::a.b.c.d, deprecated): classed as the IPv4 address.
        () if seg[..6] == [0; 6] => {
            let [.., hi, lo] = seg;
            return classify_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
                .or(Some(AddressClass::Reserved));
        }
        () => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<AddressClass> {
        classify(text.parse().expect("an address"))
    }

    #[test]
    fn public_addresses_are_public() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn special_ranges_are_classed() {
        use AddressClass::*;
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("100.64.0.1", Shared),
            ("100.127.255.254", Shared),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("224.0.0.1", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("169.254.169.254", Metadata),
            ("100.100.100.200", Metadata),
            ("fd00:ec2::254", Metadata),
            ("192.0.2.1", Reserved),
            ("240.0.0.1", Reserved),
            ("2001:db8::1", Reserved),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn ipv4_in_ipv6_is_classed_as_the_ipv4_address() {
        assert_eq!(class("::ffff:127.0.0.1"), Some(AddressClass::Loopback));
        assert_eq!(
            class("::ffff:169.254.169.254"),
            Some(AddressClass::Metadata)
        );
        assert_eq!(class("::ffff:10.0.0.1"), Some(AddressClass::Private));
        assert_eq!(class("64:ff9b::a9fe:a9fe"), Some(AddressClass::Metadata));
        assert_eq!(class("::127.0.0.1"), Some(AddressClass::Loopback));
        assert_eq!(class("::ffff:8.8.8.8"), None);
    }
}

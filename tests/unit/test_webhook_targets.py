"""Webhook target checks: classification and resolution only; nothing here opens a connection.

Every name is resolved by an injected fake resolver (IP literals need none), so these tests
send no traffic at all, public addresses included.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from serve.webhook_targets import (
    CheckedTarget,
    TargetPolicy,
    UnresolvableTargetError,
    check_webhook_target,
    classify_address,
    embedded_ipv4,
)

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def resolver(answers: dict[str, list[str]]):
    """A fake getaddrinfo: ``answers`` by host name; an unknown name fails like a DNS miss."""
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"an IP literal must not be resolved (asked for {host!r})")


# --- classify_address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "address,reason",
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.7", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("0.1.2.3", "this network"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd00:ec2::254", "unique-local"),  # AWS's IPv6 metadata endpoint
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "special-purpose"),
        ("2001:db8::1", "special-purpose"),
        ("fec0::1", "site-local"),
        ("64:ff9b:1::a00:1", "local-use NAT64"),
    ],
)
def test_non_public_addresses_are_classified_with_a_reason(address, reason):
    assert classify_address(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address,embedded,reason",
    [
        ("::ffff:127.0.0.1", "127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "169.254.169.254", "link-local (cloud metadata)"),
        ("64:ff9b::7f00:1", "127.0.0.1", "loopback"),  # NAT64, which Python 3.11 calls global
        ("64:ff9b::a9fe:a9fe", "169.254.169.254", "link-local (cloud metadata)"),
        ("2002:7f00:1::", "127.0.0.1", "loopback"),  # 6to4
        ("2002:c0a8:101::1", "192.168.1.1", "private"),
        ("::7f00:1", "127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
        ("::a00:1", "10.0.0.1", "private"),
    ],
)
def test_ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4_they_carry(address, embedded, reason):
    ip = ipaddress.ip_address(address)
    assert embedded_ipv4(ip) == ipaddress.ip_address(embedded)
    assert classify_address(ip) == reason


@pytest.mark.parametrize(
    "address", [PUBLIC_V4, "8.8.8.8", "1.1.1.1", PUBLIC_V6, f"::ffff:{PUBLIC_V4}", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]
)
def test_globally_routable_addresses_have_no_reason(address):
    assert classify_address(ipaddress.ip_address(address)) is None


def test_ipv4_compatible_addresses_are_refused_even_carrying_a_public_ipv4():
    assert classify_address(ipaddress.ip_address("::5db8:d822")) == "reserved"


# --- check_webhook_target: refused by default -----------------------------------------------


@pytest.mark.parametrize(
    "url,address,reason",
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1", "loopback"),
        ("http://[::1]:8080/hook", "::1", "loopback"),
        ("http://0.0.0.0/", "0.0.0.0", "unspecified"),
        ("http://[::]/", "::", "unspecified"),
        ("http://10.0.0.1/", "10.0.0.1", "private"),
        ("http://172.16.0.1/", "172.16.0.1", "private"),
        ("http://192.168.0.1/", "192.168.0.1", "private"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local (cloud metadata)"),
        ("http://[fe80::1]/", "fe80::1", "link-local"),
        ("https://[fc00::1]/", "fc00::1", "unique-local"),
        ("https://[fd12:3456::1]/", "fd12:3456::1", "unique-local"),
        ("http://224.0.0.1/", "224.0.0.1", "multicast"),
        ("http://[ff02::1]/", "ff02::1", "multicast"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "::ffff:a00:1", "private"),
        ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1", "loopback"),
        ("http://100.64.0.1/", "100.64.0.1", "shared (CGNAT)"),
        # Legacy IPv4 spellings, read as inet_aton (and so getaddrinfo) reads them.
        ("http://2130706433/", "127.0.0.1", "loopback"),
        ("http://0x7f.1/", "127.0.0.1", "loopback"),
        ("http://127.1/", "127.0.0.1", "loopback"),
        ("http://0x7f000001:9/", "127.0.0.1", "loopback"),
        ("http://167772161/", "10.0.0.1", "private"),
        ("http://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254", "link-local (cloud metadata)"),
    ],
)
def test_non_public_ip_literals_are_refused_naming_the_address_and_reason(url, address, reason):
    with pytest.raises(ValueError, match="^webhook_url: ") as refused:
        check_webhook_target(url, TargetPolicy(), resolve=no_dns)
    message = str(refused.value)
    assert address in message and f"({reason})" in message
    assert not isinstance(refused.value, UnresolvableTargetError)


def test_an_octal_spelling_is_refused_by_the_syntax_check():
    # httpx refuses leading-zero octets, so such a URL never reaches resolution.
    with pytest.raises(ValueError, match="^webhook_url: not a valid URL"):
        check_webhook_target("http://0177.0.0.1/", TargetPolicy(), resolve=no_dns)


def test_a_name_resolving_to_a_private_address_is_refused():
    resolve = resolver({"hooks.internal.example": ["10.1.2.3"]})
    with pytest.raises(ValueError, match=r"^webhook_url: 10\.1\.2\.3 \(the address of 'hooks\.internal\.example'\)"):
        check_webhook_target("https://hooks.internal.example/x", TargetPolicy(), resolve=resolve)
    assert resolve.asked == [("hooks.internal.example", 443)]


@pytest.mark.parametrize("records", [[PUBLIC_V4, "10.0.0.5"], ["127.0.0.1", PUBLIC_V4], [PUBLIC_V6, "fd00::5"]])
def test_a_name_with_any_non_public_record_is_refused(records):
    # Every record must pass: the connection may pick any of them.
    resolve = resolver({"mixed.example.com": records})
    with pytest.raises(ValueError, match="^webhook_url: .*not a public address"):
        check_webhook_target("http://mixed.example.com/", TargetPolicy(), resolve=resolve)


def test_a_name_that_resolves_to_a_mapped_loopback_is_refused():
    resolve = resolver({"sneaky.example.com": ["::ffff:127.0.0.1"]})
    with pytest.raises(ValueError, match=r"carrying 127\.0\.0\.1\) is not a public address \(loopback\)"):
        check_webhook_target("http://sneaky.example.com/", TargetPolicy(), resolve=resolve)


@pytest.mark.parametrize("answers", [{}, {"gone.example.com": []}])
def test_an_unresolvable_name_is_refused_as_transient(answers):
    with pytest.raises(UnresolvableTargetError, match="^webhook_url: host 'gone.example.com' does not resolve"):
        check_webhook_target("http://gone.example.com/", TargetPolicy(), resolve=resolver(answers))


def test_a_resolver_answer_that_is_not_an_address_is_refused():
    with pytest.raises(ValueError, match="^webhook_url: .*not an IP address"):
        check_webhook_target("http://odd.example.com/", TargetPolicy(), resolve=resolver({"odd.example.com": ["x"]}))


def test_the_syntax_check_runs_first():
    with pytest.raises(ValueError, match="^webhook_url: scheme must be http or https"):
        check_webhook_target("ftp://example.com/", TargetPolicy(), resolve=no_dns)


# --- accepted (classification only: nothing is sent) ---------------------------------------


def test_a_public_name_is_accepted_with_every_address_it_resolved_to():
    resolve = resolver({"hooks.example.com": [PUBLIC_V4, PUBLIC_V6]})
    target = check_webhook_target("https://hooks.example.com/v1/hook?x=1", TargetPolicy(), resolve=resolve)
    assert target == CheckedTarget(url="https://hooks.example.com/v1/hook?x=1", scheme="https",
                                   host="hooks.example.com", port=443, addresses=(PUBLIC_V4, PUBLIC_V6))
    assert not target.host_is_ip
    assert resolve.asked == [("hooks.example.com", 443)]


def test_a_public_ip_literal_is_accepted_without_dns():
    target = check_webhook_target(f"http://{PUBLIC_V4}:8080/hook", TargetPolicy(), resolve=no_dns)
    assert (target.scheme, target.host, target.port, target.addresses) == ("http", PUBLIC_V4, 8080, (PUBLIC_V4,))
    assert target.host_is_ip


def test_an_idna_host_is_resolved_in_its_ascii_form():
    resolve = resolver({"xn--bcher-kva.example": [PUBLIC_V4]})
    target = check_webhook_target("https://Bücher.example/", TargetPolicy(), resolve=resolve)
    assert target.host == "xn--bcher-kva.example" and target.addresses == (PUBLIC_V4,)


# --- the allowlist --------------------------------------------------------------------------


def test_allow_true_accepts_loopback_and_everything_else():
    policy = TargetPolicy(True)
    assert check_webhook_target("http://127.0.0.1:9/", policy, resolve=no_dns).addresses == ("127.0.0.1",)
    assert check_webhook_target("http://[::1]:9/", policy, resolve=no_dns).addresses == ("::1",)
    assert check_webhook_target("http://10.0.0.1/", policy, resolve=no_dns).addresses == ("10.0.0.1",)


def test_a_cidr_list_admits_only_its_networks():
    policy = TargetPolicy(["127.0.0.0/8"])
    assert check_webhook_target("http://127.0.0.1:9/", policy, resolve=no_dns).addresses == ("127.0.0.1",)
    assert check_webhook_target("http://[::ffff:127.0.0.1]:9/", policy, resolve=no_dns).host == "::ffff:127.0.0.1"
    assert check_webhook_target(f"http://{PUBLIC_V4}/", policy, resolve=no_dns).addresses == (PUBLIC_V4,)
    for refused in ("http://10.0.0.1/", "http://[::1]/", "http://169.254.169.254/"):
        with pytest.raises(ValueError, match="^webhook_url: .*not a public address"):
            check_webhook_target(refused, policy, resolve=no_dns)


def test_a_cidr_list_applies_to_every_resolved_record():
    policy = TargetPolicy(["10.20.0.0/16"])
    inside = resolver({"svc.cluster.local": ["10.20.1.1", "10.20.1.2"]})
    assert check_webhook_target("http://svc.cluster.local/", policy, resolve=inside).addresses == ("10.20.1.1", "10.20.1.2")
    partly = resolver({"svc.cluster.local": ["10.20.1.1", "10.30.1.1"]})
    with pytest.raises(ValueError, match=r"^webhook_url: 10\.30\.1\.1 "):
        check_webhook_target("http://svc.cluster.local/", policy, resolve=partly)


@pytest.mark.parametrize("value", [["10.0.0.0/33"], ["not-a-network"], ["10.0.0.1/8"], [8], "10.0.0.0/8"])
def test_a_bad_allowlist_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="^allow_private_targets: "):
        TargetPolicy(value)


def test_policies_are_frozen_and_comparable():
    assert TargetPolicy() == TargetPolicy(False)
    assert TargetPolicy(["127.0.0.0/8"]) == TargetPolicy(("127.0.0.0/8",))
    assert TargetPolicy(["127.0.0.0/8"]).allow_private_targets == (ipaddress.ip_network("127.0.0.0/8"),)
    with pytest.raises(AttributeError):
        TargetPolicy().allow_private_targets = True  # type: ignore[misc]


def test_the_config_field_validates_cidrs_naming_the_field():
    from pydantic import ValidationError

    from serve.app_config import AppConfig

    assert AppConfig().webhooks.allow_private_targets is False
    config = AppConfig(webhooks={"allow_private_targets": ["10.20.0.0/16", "fd00::/8"]})
    assert TargetPolicy(config.webhooks.allow_private_targets).refusal(ipaddress.ip_address("10.20.3.4")) is None
    with pytest.raises(ValidationError, match="allow_private_targets: 'nope' is not a network"):
        AppConfig(webhooks={"allow_private_targets": ["nope"]})

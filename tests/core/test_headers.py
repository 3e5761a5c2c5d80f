import pytest

from sidecar.core.resilience.headers import (
    parse_deprecation,
    parse_link_rel,
    parse_rate_limit_reset,
    parse_retry_after,
    parse_sunset,
)

# Sun, 06 Nov 1994 08:49:37 GMT, the RFC 9110 example date.
EXAMPLE_DATE = 784111777.0
NOW = 1_700_000_000.0


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("120", 120.0), (" 0 ", 0.0), ("1.5", 1.5), ("-5", 0.0)],
    )
    def test_delay_seconds(self, value: str, expected: float) -> None:
        assert parse_retry_after(value, NOW) == expected

    @pytest.mark.parametrize(
        "value",
        [
            "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
            "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
            "Sun Nov  6 08:49:37 1994",  # obsolete asctime, no zone: GMT
        ],
    )
    def test_http_date_in_every_form(self, value: str) -> None:
        assert parse_retry_after(value, EXAMPLE_DATE - 30) == 30.0

    def test_date_in_the_past_means_now(self) -> None:
        assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOW) == 0.0

    @pytest.mark.parametrize("value", ["", "soon", "1e3", "12s", "Sun, 32 Nov 1994 08:49:37 GMT"])
    def test_garbage(self, value: str) -> None:
        assert parse_retry_after(value, NOW) is None


class TestRateLimitReset:
    def test_delta_seconds(self) -> None:
        assert parse_rate_limit_reset("50", NOW) == 50.0

    def test_unix_timestamp_above_the_threshold(self) -> None:
        assert parse_rate_limit_reset(str(int(NOW) + 42), NOW) == 42.0

    def test_unix_timestamp_in_milliseconds(self) -> None:
        assert parse_rate_limit_reset(str(int(NOW + 7) * 1000), NOW) == 7.0

    def test_timestamp_in_the_past_means_now(self) -> None:
        assert parse_rate_limit_reset(str(int(NOW) - 100), NOW) == 0.0

    def test_delta_just_below_the_threshold_stays_a_delta(self) -> None:
        assert parse_rate_limit_reset("999999999", NOW) == 999999999.0

    def test_structured_ratelimit_field(self) -> None:
        assert parse_rate_limit_reset('"default";r=0;t=30', NOW) == 30.0

    @pytest.mark.parametrize("value", ["", "later", '"default";r=0'])
    def test_garbage(self, value: str) -> None:
        assert parse_rate_limit_reset(value, NOW) is None


class TestDeprecation:
    def test_rfc_9745_structured_date(self) -> None:
        assert parse_deprecation("@1688169599") == (True, 1688169599.0)

    def test_legacy_true(self) -> None:
        assert parse_deprecation("true") == (True, None)
        assert parse_deprecation("TRUE") == (True, None)

    def test_legacy_http_date(self) -> None:
        assert parse_deprecation("Sun, 06 Nov 1994 08:49:37 GMT") == (True, EXAMPLE_DATE)

    @pytest.mark.parametrize("value", ["", "false", "@", "@12.5", "1688169599", "yes"])
    def test_anything_else_is_not_a_deprecation(self, value: str) -> None:
        assert parse_deprecation(value) == (False, None)


class TestSunset:
    def test_http_date(self) -> None:
        assert parse_sunset("Sun, 06 Nov 1994 08:49:37 GMT") == EXAMPLE_DATE

    def test_structured_date_leniently(self) -> None:
        assert parse_sunset("@1688169599") == 1688169599.0

    @pytest.mark.parametrize("value", ["", "tomorrow", "1688169599"])
    def test_garbage(self, value: str) -> None:
        assert parse_sunset(value) is None


class TestLinkRel:
    def test_first_matching_link_in_header_order(self) -> None:
        header = (
            '<https://api.example.com/next>; rel="next", '
            '<https://developer.example.com/sunset>; rel="sunset", '
            '<https://developer.example.com/deprecation>; rel="deprecation"'
        )
        assert parse_link_rel(header) == "https://developer.example.com/sunset"
        assert parse_link_rel(header, rels=("deprecation",)) == (
            "https://developer.example.com/deprecation"
        )

    def test_rel_lists_tokens_and_case(self) -> None:
        header = (
            '<https://d.example/a>; rel=alternate, <https://d.example/b>; REL="Next DEPRECATION"'
        )
        assert parse_link_rel(header) == "https://d.example/b"

    def test_commas_and_semicolons_inside_uris_and_quotes(self) -> None:
        header = (
            '<https://x.example/a,b;c>; title="one, two; three"; rel="next", '
            '<https://x.example/d,e>; title="x\\"y"; rel="deprecation"'
        )
        assert parse_link_rel(header) == "https://x.example/d,e"

    def test_other_params_named_like_rel_do_not_match(self) -> None:
        header = '<https://x.example/a>; anchor="deprecation"; rel="next"'
        assert parse_link_rel(header) is None

    def test_only_the_first_rel_parameter_counts(self) -> None:
        header = '<https://x.example/a>; rel="next"; rel="deprecation"'
        assert parse_link_rel(header) is None

    def test_relative_uri_is_returned_as_sent(self) -> None:
        assert parse_link_rel('</docs/deprecation>; rel="deprecation"') == "/docs/deprecation"

    @pytest.mark.parametrize(
        "header",
        ["", "garbage", '<https://x.example/a; rel="deprecation"', "https://x.example; rel=sunset"],
    )
    def test_malformed(self, header: str) -> None:
        assert parse_link_rel(header) is None

    def test_links_before_a_malformed_one_still_count(self) -> None:
        header = '<https://x.example/a>; rel="sunset", <https://x.example/b>; rel="unterminated'
        assert parse_link_rel(header) == "https://x.example/a"

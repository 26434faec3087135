package connect

import (
	"context"
	"strings"
	"testing"
)

func TestRedisOptions(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:6379":           "127.0.0.1:6379",
		"redis://127.0.0.1:6380/2": "127.0.0.1:6380",
		"a:1, b:2":                 "a:1,b:2",
	} {
		o, err := RedisOptions(addr)
		if err != nil {
			t.Fatalf("%q: %v", addr, err)
		}
		if got := strings.Join(o.Addrs, ","); got != want {
			t.Fatalf("%q: addrs %q, want %q", addr, got, want)
		}
		if o.IsClusterMode != strings.Contains(want, ",") {
			t.Fatalf("%q: cluster mode %v", addr, o.IsClusterMode)
		}
	}
	if o, _ := RedisOptions("redis://127.0.0.1:6380/2"); o.DB != 2 {
		t.Fatalf("DB = %d, want 2", o.DB)
	}
	for _, bad := range []string{"", "localhost", "redis://h:1/notadb"} {
		if _, err := RedisOptions(bad); err == nil {
			t.Errorf("RedisOptions(%q) accepted", bad)
		}
	}
}

func TestUnreachableServersFailWithOneLine(t *testing.T) {
	ctx := context.Background()
	if _, err := Redis(ctx, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "Redis at 127.0.0.1:1 is unreachable") {
		t.Fatalf("Redis: err = %v", err)
	}
	_, err := Postgres(ctx, "OLD", "postgres://u:secret@127.0.0.1:1/db?connect_timeout=2", nil)
	if err == nil || !strings.HasPrefix(err.Error(), "OLD database at 127.0.0.1:1/db is unreachable") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("Postgres: err = %v", err)
	}
	if _, err := Postgres(ctx, "NEW", "", nil); err == nil || err.Error() != "NEW database: no DSN given" {
		t.Fatalf("empty DSN: err = %v", err)
	}
	if _, err := Postgres(ctx, "NEW", "postgres://h:notaport/db", nil); err == nil || !strings.HasPrefix(err.Error(), "NEW database: bad DSN") {
		t.Fatalf("bad DSN: err = %v", err)
	}
}

// A Redis address that cannot be used is named in the error without its
// password: errors end up in CI logs and journald.
func TestRedisAddressErrorsHideThePassword(t *testing.T) {
	t.Parallel()
	const secret = "s3cretpw"
	for addr, want := range map[string]string{
		// redis.ParseURL refuses the database.
		"redis://:" + secret + "@127.0.0.1:6379/notadb": `Redis address "redis://:xxxxx@127.0.0.1:6379/notadb": redis: invalid database number`,
		// url.Parse refuses the port; its error quotes the whole URL.
		"redis://user:" + secret + "@127.0.0.1:port/0": `Redis address "redis://xxxxx@127.0.0.1:port/0": invalid port`,
		"rediss://user:" + secret + "%zz@h:1":          `Redis address "rediss://xxxxx@h:1": invalid URL escape`,
		// Not a URL, not host:port.
		secret + "@localhost": `Redis address "xxxxx@localhost": want host:port`,
	} {
		_, err := RedisOptions(addr)
		if err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), want) {
			t.Errorf("RedisOptions(%q): err = %v, want %q and no password", addr, err, want)
		}
	}
	if got, want := RedactURL("http://admin:"+secret+"@pg:9091/x"), "http://admin:xxxxx@pg:9091/x"; got != want {
		t.Errorf("RedactURL = %q, want %q", got, want)
	}
}

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

package lazy

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// classifyNewFailure decides whether a failed read of NEW sends reads to
// OLD (unreachable), is tried again on another connection (broken), or is
// returned as it is (other). The caller's own deadline or cancellation is
// "other" although context.DeadlineExceeded is also a net.Error: it says
// nothing about NEW.
func TestClassifyNewFailure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, refused := pgconn.Connect(ctx, "host=127.0.0.1 port=1 user=rg dbname=rg sslmode=disable connect_timeout=5")
	if refused == nil {
		t.Fatal("a connection to 127.0.0.1:1 succeeded")
	}
	for _, c := range []struct {
		name string
		err  error
		want newFailure
	}{
		{"caller's deadline", context.DeadlineExceeded, newOther},
		{"caller's deadline, wrapped", fmt.Errorf("acquire: %w", context.DeadlineExceeded), newOther},
		{"caller cancelled", context.Canceled, newOther},
		{"dial refused", refused, newUnreachable},
		{"cut network", &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}, newConnBroken},
		{"EOF", io.EOF, newConnBroken},
		{"unexpected EOF, wrapped", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), newConnBroken},
		{"backend terminated", &pgconn.PgError{Code: "57P01"}, newConnBroken},
		{"connection failure", &pgconn.PgError{Code: "08006"}, newConnBroken},
		{"statement refused", &pgconn.PgError{Code: "42P01"}, newOther},
		{"Scan error that reads like a cut", scanError{io.ErrUnexpectedEOF}, newOther},
	} {
		if got := classifyNewFailure(c.err); got != c.want {
			t.Errorf("%s: classifyNewFailure(%v) = %d, want %d", c.name, c.err, got, c.want)
		}
	}
}

package httpmw

import (
	"context"
	"fmt"
	"reflect"
)

// Source names the database a response was produced from: the value of the
// Lazymigrate-Source response header.
type Source string

// The two sides of a migration.
const (
	SourceNew Source = "new"
	SourceOld Source = "old"
)

// HeaderSource is the response header that says which database answered:
// "new" or "old". It is set on every response a wrapped handler produced for
// a GET or HEAD request, and on none of the middleware's own error
// responses.
const HeaderSource = "Lazymigrate-Source"

// routing is what a handler finds in its request's context: the database to
// use and the key the middleware parsed. It is a context itself, so that
// routing a request costs one allocation rather than two.
type routing struct {
	context.Context
	db     any
	source Source
	key    int64
	hasKey bool
}

type routingKey struct{}

func (c *routing) Value(k any) any {
	if _, ok := k.(routingKey); ok {
		return c
	}
	return c.Context.Value(k)
}

func routingOf(ctx context.Context) *routing {
	c, _ := ctx.Value(routingKey{}).(*routing)
	return c
}

// DB returns the database handle a wrapped handler must use for this request:
// NEW's or OLD's, as given to New, whichever side the middleware is running
// the handler against. A handler written once with DB serves both sides:
//
//	pool := httpmw.DB[*pgxpool.Pool](r.Context())
//
// DB panics when ctx does not come from a request routed by a Middleware, or
// when T is not the type of the handles (or an interface they implement):
// both are programming errors that no request could recover from.
func DB[T any](ctx context.Context) T {
	c := routingOf(ctx)
	if c == nil {
		panic("httpmw: DB called with a context that no httpmw.Middleware routed")
	}
	db, ok := c.db.(T)
	if !ok {
		panic(fmt.Sprintf("httpmw: DB[%s]: the middleware's databases are of type %T", reflect.TypeFor[T](), c.db))
	}
	return db
}

// SourceOf returns the side a wrapped handler is running against, or "" when
// ctx comes from no request routed by a Middleware.
func SourceOf(ctx context.Context) Source {
	if c := routingOf(ctx); c != nil {
		return c.source
	}
	return ""
}

// Key returns the key the middleware extracted from a GET or HEAD request
// with Config.Key, so that the handler need not parse it again. ok is false
// for other methods, and outside the middleware.
func Key(ctx context.Context) (key int64, ok bool) {
	if c := routingOf(ctx); c != nil && c.hasKey {
		return c.key, true
	}
	return 0, false
}

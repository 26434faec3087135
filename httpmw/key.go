package httpmw

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/lazymigrate/lazymigrate/internal/keys"
)

// KeyFunc extracts the key of the record a request reads. An error that
// wraps ErrInvalidKey means the request names no valid key: the middleware
// answers 400 without running the handler. Any other error is a fault of the
// server (a misconfigured KeyFunc): the middleware answers 500. A key below
// zero is invalid.
type KeyFunc func(r *http.Request) (int64, error)

// PathKey returns a KeyFunc that parses the path wildcard name (see
// http.Request.PathValue) as a decimal integer >= 0; for the route
// "GET /accounts/{id}", PathKey("id"). Anything else in that place is an
// invalid key. A route whose pattern has no wildcard of that name is a
// configuration error (500), not a client's.
//
// PathValue is filled in by http.ServeMux before it calls the handler it
// routed to, so wrap that handler, not the mux.
func PathKey(name string) KeyFunc {
	return func(r *http.Request) (int64, error) {
		v := r.PathValue(name)
		k, err := strconv.ParseInt(v, 10, 64)
		if err == nil && k >= 0 {
			return k, nil
		}
		if v == "" && r.Pattern != "" && !hasWildcard(r.Pattern, name) {
			return 0, fmt.Errorf("httpmw: PathKey(%q): route %q has no wildcard {%s}", name, r.Pattern, name)
		}
		return 0, fmt.Errorf("%w: path value %s is %s", ErrInvalidKey, name, quote(v))
	}
}

// hasWildcard reports whether pattern names the wildcard {name} or
// {name...}.
func hasWildcard(pattern, name string) bool {
	return strings.Contains(pattern, "{"+name+"}") || strings.Contains(pattern, "{"+name+"...}")
}

// maxQuoted bounds how much of a client's input goes back to it in an error.
const maxQuoted = 64

func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:maxQuoted], len(s))
}

// checkKey applies lazymigrate's key rule to what a KeyFunc returned.
func checkKey(k int64, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return k, keys.Check(k)
}

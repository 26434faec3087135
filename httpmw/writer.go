package httpmw

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
)

// policy says what an attempt does with the status its handler answers.
type policy uint8

const (
	// final: every status goes out; the response streams as the handler
	// writes it.
	final policy = iota
	// tryNew: a 404 is held back, its body buffered, for the middleware to
	// decide whether OLD answers instead; any other status goes out.
	tryNew
	// tryOld: a 5xx is dropped (the middleware answers 503 instead); any
	// other status goes out.
	tryOld
)

// state is where an attempt's response stands.
type state uint8

const (
	pending  state = iota // no status yet
	sent                  // status and headers passed on; the body streams through
	held                  // a 404 from NEW, buffered
	dropped               // a 5xx from OLD, discarded
	hijacked              // the handler took the connection over
)

// writer is the http.ResponseWriter a handler gets for one attempt. Until
// its policy lets the response go out, nothing reaches the client; once it
// has, it is a thin pass-through. Handlers write headers straight into the
// client's header map (the middleware restores it when it discards an
// attempt), so that trailers and late header changes behave as usual.
type writer struct {
	w      http.ResponseWriter
	policy policy
	source Source
	state  state
	status int
	buf    []byte
	limit  int  // most bytes held for a 404
	spilt  bool // a held 404 outgrew limit and went out as it was
}

var (
	_ http.Flusher  = (*writer)(nil)
	_ http.Hijacker = (*writer)(nil)
)

func (a *writer) Header() http.Header { return a.w.Header() }

func (a *writer) WriteHeader(code int) {
	if a.state != pending {
		if a.state == sent {
			a.w.WriteHeader(code) // net/http reports the superfluous call
		}
		return
	}
	if code < 100 || code > 999 {
		// What net/http does, but at the call, even for a response held back.
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// An informational response (103 Early Hints): only the attempt
		// that is sure to be final may pass it on, or the client could see
		// hints from the side that does not answer.
		if a.policy == final {
			a.w.WriteHeader(code)
		}
		return
	}
	a.decide(code, true)
}

// decide applies the policy to the handler's status; explicit is false for
// the 200 implied by a Write (or by nothing) without WriteHeader.
func (a *writer) decide(code int, explicit bool) {
	a.status = code
	switch {
	case a.policy == tryNew && code == http.StatusNotFound:
		a.state = held
	case a.policy == tryOld && code >= 500:
		a.state = dropped
	default:
		a.send(explicit)
	}
}

// send lets the response go out: from here on the handler writes to the
// client. A status the handler only implied is left implied, so that the
// client's writer treats the response exactly as it would have without the
// middleware (content sniffing included).
func (a *writer) send(explicit bool) {
	a.state = sent
	a.w.Header()[HeaderSource] = []string{string(a.source)}
	if explicit {
		a.w.WriteHeader(a.status)
	}
}

func (a *writer) Write(p []byte) (int, error) {
	if a.state == pending {
		a.decide(http.StatusOK, false)
	}
	switch a.state {
	case sent:
		return a.w.Write(p)
	case held:
		if len(a.buf)+len(p) <= a.limit {
			a.buf = append(a.buf, p...)
			return len(p), nil
		}
		a.spilt = true
		if err := a.release(); err != nil {
			return 0, err
		}
		return a.w.Write(p)
	case dropped:
		return len(p), nil
	default:
		return 0, http.ErrHijacked
	}
}

// release sends a held response as NEW answered it.
func (a *writer) release() error {
	a.send(true)
	buf := a.buf
	a.buf = nil
	if len(buf) == 0 {
		return nil
	}
	_, err := a.w.Write(buf)
	return err
}

// Flush sends what the handler has written so far, as net/http's own writer
// does (a Flush before any write sends a 200). A held 404 or a dropped 5xx
// is not flushed: it may never go out.
func (a *writer) Flush() { _ = a.FlushError() }

// FlushError is Flush for http.ResponseController, reporting the error.
func (a *writer) FlushError() error {
	if a.state == pending {
		a.WriteHeader(http.StatusOK)
	}
	if a.state != sent {
		return nil
	}
	if f, ok := a.w.(interface{ FlushError() error }); ok {
		return f.FlushError()
	}
	return http.NewResponseController(a.w).Flush()
}

// Hijack hands the connection to the handler, whose answer is then final.
func (a *writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(a.w).Hijack()
	if err == nil {
		a.state = hijacked
		a.buf = nil
	}
	return c, rw, err
}

// Unwrap gives http.ResponseController the client's writer, for deadlines
// and full duplex.
func (a *writer) Unwrap() http.ResponseWriter { return a.w }

// finish completes the attempt after its handler returned: a handler that
// wrote nothing answered 200, as with net/http.
func (a *writer) finish() {
	if a.state == pending {
		a.decide(http.StatusOK, false)
	}
}

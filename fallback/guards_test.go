package fallback_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// hangingProxy is a TCP proxy to a real Redis that can be told to hang:
// from then on it still accepts connections and reads requests, but no
// reply reaches the client. It stands for a Redis that is wedged (or a
// network path that drops packets) rather than down.
type hangingProxy struct {
	ln       net.Listener
	upstream string
	hung     atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// newHangingProxy starts a proxy to upstream on a free local port and stops
// it, closing every connection, when the test ends.
func newHangingProxy(t *testing.T, upstream string) *hangingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p := &hangingProxy{ln: ln, upstream: upstream, conns: []net.Conn{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *hangingProxy) addr() string { return p.ln.Addr().String() }

// track records c so that close closes it; it reports false (and closes c)
// once the proxy is closed.
func (p *hangingProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		_ = c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *hangingProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		if p.hung.Load() {
			p.wg.Add(1)
			go func() { // read requests, never answer
				defer p.wg.Done()
				_, _ = io.Copy(io.Discard, c)
			}()
			continue
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil || !p.track(u) {
			_ = c.Close()
			continue
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(u, c)
		}()
		go func() { // replies, dropped while hung
			defer p.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := u.Read(buf)
				if n > 0 && !p.hung.Load() {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

func (p *hangingProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// TestRunSurvivesHungRedis checks that each poll of Run is abandoned after
// its timeout even when the client itself would wait forever: a Redis that
// accepts connections and never answers must not stop the polling, and the
// last known mode stays in force meanwhile.
func TestRunSurvivesHungRedis(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy := newHangingProxy(t, b.rdb.Options().Addr)

	// No socket timeout of the client's own: only the context of each poll
	// can end a read. ContextTimeoutEnabled makes go-redis apply it.
	rdb := redis.NewClient(&redis.Options{
		Addr:                  proxy.addr(),
		ReadTimeout:           -1,
		WriteTimeout:          -1,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
	})
	t.Cleanup(func() { _ = rdb.Close() })

	reg := prometheus.NewRegistry()
	var logs logBuffer
	sw := b.newSwitch(t, rdb, &fallback.Config{Registerer: reg, Logger: logs.logger()})
	cli := b.newSwitch(t, b.rdb, nil)

	mustSet(t, cli, fallback.ModeOld)
	startRun(t, sw)
	eventuallyMode(t, sw, fallback.ModeOld, "through the proxy, before it hangs")
	if n := pollErrors(t, reg); n != 0 {
		t.Fatalf("poll errors before the hang = %v, want 0", n)
	}

	proxy.hung.Store(true)
	// Every hung poll takes the 1s minimum poll timeout.
	const hungPolls = 3
	testenv.Eventually(t, hungPolls*time.Second+waitFor, "Run abandons hung polls and polls again", func() bool {
		return pollErrors(t, reg) >= hungPolls
	})
	wantMode(t, sw, fallback.ModeOld, "while Redis hangs (not Default)")
	if out := logs.String(); !strings.Contains(out, "context deadline exceeded") && !strings.Contains(out, "i/o timeout") {
		t.Errorf("failed polls should be logged with the timeout as their cause:\n%s", out)
	}

	// Once Redis answers again, Run follows a Set made meanwhile.
	mustSet(t, cli, fallback.ModeNew)
	proxy.hung.Store(false)
	eventuallyMode(t, sw, fallback.ModeNew, "after the hang")
	testenv.Eventually(t, waitFor, "recovery is logged", func() bool {
		return strings.Contains(logs.String(), "readable again")
	})
}

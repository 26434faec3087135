package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lazymigrate/lazymigrate/httpmw"
)

func runLoad(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var c loadConfig
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:8080", "the service's `host:port`, or its base URL")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "how long to send requests")
	fs.Float64Var(&c.Rate, "rate", 0, "requests per second, sent on schedule whatever the latency (0: as fast as -concurrency allows)")
	fs.IntVar(&c.Concurrency, "concurrency", 0, "requests in flight at most (default 64 with -rate, 16 without)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "give up on a request after this long (an error)")
	fs.DurationVar(&c.Grace, "grace", 5*time.Second,
		"after -duration, how long to wait for the requests in flight; those still unanswered are errors")
	fs.Int64Var(&c.Rows, "rows", 200_000, "read ids 1 to `N`")
	fs.Float64Var(&c.ZipfS, "zipf-s", 1.1, "Zipf exponent, above 1: the higher, the more reads go to the hottest keys")
	fs.Float64Var(&c.ZipfV, "zipf-v", 1, "Zipf offset, at least 1: the higher, the flatter the head")
	fs.Uint64Var(&c.Seed, "seed", 1, "random seed")
	maxP99 := fs.Duration("max-p99", 0, "fail when the p99 latency is above this (0: no limit)")
	asJSON := fs.Bool("json", false, "print the summary as JSON, and no per-second lines")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if !*asJSON {
		c.Progress = stdout
	}
	rep, err := load(ctx, c)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stdout, rep)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if problems := rep.problems(c, *maxP99); len(problems) > 0 {
		return fmt.Errorf("load: %s", strings.Join(problems, "; "))
	}
	return nil
}

// minSentShare is the share of the requests -rate calls for that a run
// must send: below it, the service was too slow for -concurrency and the
// run did not measure the load it was asked for.
const minSentShare = 0.9

// problems lists what makes the run a failure.
func (r LoadReport) problems(c loadConfig, maxP99 time.Duration) []string {
	var out []string
	switch {
	case r.Sent == 0:
		out = append(out, "no request was sent")
	case r.Errors == r.Sent:
		out = append(out, fmt.Sprintf("all %d requests sent failed", r.Sent))
	case r.Errors > 0:
		out = append(out, fmt.Sprintf("%d of %d requests failed", r.Errors, r.Sent))
	}
	if r.GivenUp > 0 {
		out = append(out, fmt.Sprintf("%d were still unanswered -grace %s after -duration", r.GivenUp, c.Grace))
	}
	if c.Rate > 0 && float64(r.Sent) < minSentShare*float64(r.Scheduled) {
		out = append(out, fmt.Sprintf("sent %d of the %d requests -rate %g called for: the service is too slow for -concurrency %d",
			r.Sent, r.Scheduled, c.Rate, r.Concurrency))
	}
	if maxP99 > 0 && r.P99 > maxP99 {
		out = append(out, fmt.Sprintf("p99 latency %s is above -max-p99 %s", ms(r.P99), ms(maxP99)))
	}
	return out
}

// loadConfig configures a load run.
type loadConfig struct {
	// Addr is the service: host:port or a base URL.
	Addr string
	// Duration is how long requests are sent.
	Duration time.Duration
	// Rate, when positive, sends that many requests per second on a fixed
	// schedule (an open loop): a request's latency runs from when it was
	// due, so a slow service cannot hide its queueing by slowing the load.
	// Otherwise each of Concurrency workers sends its next request as
	// soon as the last is answered.
	Rate float64
	// Concurrency bounds the requests in flight. Defaults to 64 with Rate,
	// 16 without.
	Concurrency int
	// Timeout bounds each request: one unanswered by then is an error.
	// Defaults to 10s.
	Timeout time.Duration
	// Grace is how long the run waits, after Duration, for the requests
	// in flight; those still unanswered are given up on and count as
	// errors, with their latency measured to then. Zero gives up at once.
	Grace time.Duration
	// Rows: keys are drawn from 1 to Rows.
	Rows         int64
	ZipfS, ZipfV float64
	Seed         uint64
	// Progress, when set, receives a line per second.
	Progress io.Writer
}

// LoadReport sums up a load run.
type LoadReport struct {
	// Scheduled is how many requests Rate called for while the run sent
	// (Rate × Duration in a run not interrupted); without Rate, Sent.
	Scheduled int `json:"scheduled"`
	// Sent counts the requests sent, each of them answered, failed or
	// given up. Fewer than Scheduled means Concurrency requests were in
	// flight when more were due: the service was too slow for it.
	Sent int `json:"sent"`
	// Errors counts requests that failed (Timeout included), answered
	// neither 200 nor 404, or were given up.
	Errors int `json:"errors"`
	// GivenUp counts the requests still unanswered Grace after Duration.
	GivenUp  int `json:"given_up"`
	NotFound int `json:"not_found"`
	// FromNew and FromOld count answers by their Lazymigrate-Source.
	FromNew int `json:"from_new"`
	FromOld int `json:"from_old"`
	// NewShare is FromNew's share of the answers with a source, over the
	// whole run; LastNewShare over its last second.
	NewShare     float64 `json:"new_share"`
	LastNewShare float64 `json:"last_new_share"`
	Concurrency  int     `json:"concurrency"`
	// Elapsed runs to the last request's end, the wait for those in
	// flight included; PerSec is Sent over the time spent sending.
	Elapsed time.Duration `json:"elapsed_ns"`
	PerSec  float64       `json:"per_sec"`
	// The latency percentiles are over every request sent, failed and
	// given up included.
	P50 time.Duration `json:"p50_ns"`
	P90 time.Duration `json:"p90_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

func (r LoadReport) String() string {
	sent := fmt.Sprintf("%d requests", r.Sent)
	if r.Sent != r.Scheduled {
		sent = fmt.Sprintf("%d requests sent of %d scheduled", r.Sent, r.Scheduled)
	}
	return fmt.Sprintf("load: %s in %s (%.0f/s); NEW served %.1f%% (%.1f%% in the last second); "+
		"latency p50 %s, p90 %s, p99 %s, max %s; %d errors (%d given up), %d not found",
		sent, r.Elapsed.Round(10*time.Millisecond), r.PerSec, 100*r.NewShare, 100*r.LastNewShare,
		ms(r.P50), ms(r.P90), ms(r.P99), ms(r.Max), r.Errors, r.GivenUp, r.NotFound)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// outcome is one request's answer.
type outcome struct {
	latency time.Duration
	source  string // the Lazymigrate-Source header
	failed  bool
	missing bool // 404
	givenUp bool // still unanswered Grace after Duration
	// interrupted: cut off because the caller's context ended; left out
	// of the report.
	interrupted bool
}

// tally sums up outcomes.
type tally struct {
	n, failed, givenUp, missing, fromNew, fromOld int
	latencies                                     []time.Duration
}

func (t *tally) add(o outcome) {
	t.n++
	t.latencies = append(t.latencies, o.latency)
	switch {
	case o.failed:
		t.failed++
	case o.missing:
		t.missing++
	}
	if o.givenUp {
		t.givenUp++
	}
	switch o.source {
	case string(httpmw.SourceNew):
		t.fromNew++
	case string(httpmw.SourceOld):
		t.fromOld++
	}
}

func (t *tally) newShare() float64 {
	if t.fromNew+t.fromOld == 0 {
		return 0
	}
	return float64(t.fromNew) / float64(t.fromNew+t.fromOld)
}

// quantile returns the q-quantile of the sorted latencies.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(math.Ceil(q*float64(len(sorted))))-1)]
}

// givenUp is the cause with which a run cancels the requests still in
// flight Grace after Duration: at is when it gave up on them.
type givenUp struct{ at time.Time }

func (givenUp) Error() string { return "given up at the end of the run" }

// load runs the read load of c against the service and returns its report.
// It stops early, with what it measured, when ctx ends; the requests ctx
// cut off are left out.
//
// Sending stops at c.Duration; each request runs under its own c.Timeout,
// from ctx rather than from the end of sending, so that the requests in
// flight then (the slow ones, most likely) are measured too: the run waits
// c.Grace for them, and gives up on those still unanswered, counting them
// as errors whose latency runs to then.
func load(ctx context.Context, c loadConfig) (LoadReport, error) {
	base := strings.TrimRight(c.Addr, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	switch {
	case c.Duration <= 0:
		return LoadReport{}, usageError{errors.New("-duration must be positive")}
	case c.Rate < 0:
		return LoadReport{}, usageError{errors.New("-rate must not be negative")}
	case c.Rows < 1:
		return LoadReport{}, usageError{errors.New("-rows must be at least 1")}
	case c.ZipfS <= 1 || c.ZipfV < 1:
		return LoadReport{}, usageError{errors.New("-zipf-s must be above 1 and -zipf-v at least 1")}
	case c.Concurrency < 0:
		return LoadReport{}, usageError{errors.New("-concurrency must not be negative")}
	case c.Timeout < 0:
		return LoadReport{}, usageError{errors.New("-timeout must not be negative")}
	case c.Grace < 0:
		return LoadReport{}, usageError{errors.New("-grace must not be negative")}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 16
		if c.Rate > 0 {
			c.Concurrency = 64
		}
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = c.Concurrency
	transport.MaxIdleConnsPerHost = c.Concurrency
	client := &http.Client{Transport: transport} // each request has its own deadline
	defer transport.CloseIdleConnections()
	if err := checkService(ctx, client, base); err != nil {
		return LoadReport{}, err
	}

	// sending ends at the deadline; requests ends when the run gives up on
	// those in flight, with a givenUp cause.
	sending, stopSending := context.WithTimeout(ctx, c.Duration)
	defer stopSending()
	requests, giveUp := context.WithCancelCause(ctx)
	defer giveUp(nil)
	results := make(chan outcome, 4*c.Concurrency)
	get := func(at time.Time, id int64) {
		results <- request(requests, c.Timeout, client, fmt.Sprintf("%s/accounts/%d", base, id), at)
	}

	var (
		wg        sync.WaitGroup
		scheduled int // written by the scheduler, read once wg is done
	)
	start := time.Now()
	if c.Rate > 0 {
		type job struct {
			at time.Time
			id int64
		}
		jobs := make(chan job, c.Concurrency)
		for range c.Concurrency {
			wg.Go(func() {
				for j := range jobs {
					if sending.Err() != nil {
						continue // due, but not sent before the end: Sent < Scheduled tells
					}
					get(j.at, j.id)
				}
			})
		}
		wg.Go(func() {
			defer close(jobs)
			n := schedule(c, start)
			defer func() { scheduled = n(time.Now()) }()
			keys := newKeys(c, 0)
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			total := n(start.Add(c.Duration))
			for next := 0; next < total; {
				for due := n(time.Now()); next < due; next++ {
					at := start.Add(time.Duration(float64(next) / c.Rate * float64(time.Second)))
					select {
					case jobs <- job{at, keys.next()}:
					case <-sending.Done():
						return
					}
				}
				select {
				case <-sending.Done():
					return
				case <-tick.C:
				}
			}
		})
	} else {
		for i := range c.Concurrency {
			wg.Go(func() {
				keys := newKeys(c, uint64(i))
				for sending.Err() == nil {
					get(time.Now(), keys.next())
				}
			})
		}
	}
	go func() {
		wg.Wait()
		close(results)
	}()

	var all, second tally
	lastShare, fullSecond := 0.0, false
	report := time.NewTicker(time.Second)
	defer report.Stop()
	printSecond := func() {
		if second.n > 0 {
			lastShare, fullSecond = second.newShare(), true
		}
		if c.Progress != nil {
			slices.Sort(second.latencies)
			fmt.Fprintf(c.Progress, "%4.0fs  %6d req/s  NEW %5.1f%%  p50 %s  p99 %s  errors %d\n",
				time.Since(start).Seconds(), second.n, 100*second.newShare(),
				ms(quantile(second.latencies, 0.5)), ms(quantile(second.latencies, 0.99)), second.failed)
		}
		second = tally{}
	}
	stopped := sending.Done() // then wait Grace for the requests in flight
	var grace <-chan time.Time
	sendEnd := start.Add(c.Duration) // sooner if ctx ended first
	for done := false; !done; {
		select {
		case o, ok := <-results:
			if !ok {
				done = true
				break
			}
			if o.interrupted {
				continue // cut off by ctx: the run is abandoned, not measured
			}
			all.add(o)
			second.add(o)
		case <-stopped:
			stopped = nil
			if now := time.Now(); now.Before(sendEnd) {
				sendEnd = now
			}
			t := time.NewTimer(c.Grace)
			defer t.Stop()
			grace = t.C
		case now := <-grace:
			grace = nil
			giveUp(givenUp{at: now})
		case <-report.C:
			printSecond()
		}
	}
	elapsed := time.Since(start)
	if second.n > 0 && !fullSecond { // a run shorter than a second
		lastShare = second.newShare()
	}
	if c.Rate == 0 {
		scheduled = all.n
	}

	slices.Sort(all.latencies)
	return LoadReport{
		Scheduled: scheduled, Sent: all.n, Errors: all.failed, GivenUp: all.givenUp, NotFound: all.missing,
		FromNew: all.fromNew, FromOld: all.fromOld,
		NewShare: all.newShare(), LastNewShare: lastShare, Concurrency: c.Concurrency,
		Elapsed: elapsed, PerSec: float64(all.n) / sendEnd.Sub(start).Seconds(),
		P50: quantile(all.latencies, 0.5), P90: quantile(all.latencies, 0.9),
		P99: quantile(all.latencies, 0.99), Max: quantile(all.latencies, 1),
	}, nil
}

// schedule returns, for a run of c at c.Rate starting at start, how many
// requests are due at a time: request k is due at start + k/Rate, and
// none at or after start + Duration.
func schedule(c loadConfig, start time.Time) func(time.Time) int {
	total := int(math.Ceil(c.Duration.Seconds()*c.Rate - 1e-9))
	return func(t time.Time) int {
		if t.Before(start) {
			return 0
		}
		return min(total, int(t.Sub(start).Seconds()*c.Rate)+1)
	}
}

// request sends one GET under run, bounded by timeout; its latency runs
// from at, when it was due. A request run ends was given up on, its
// latency measured to then, if run ended with a givenUp cause, and was
// interrupted otherwise.
func request(run context.Context, timeout time.Duration, client *http.Client, url string, at time.Time) outcome {
	ctx, cancel := context.WithTimeout(run, timeout)
	defer cancel()
	failed := func() outcome {
		o := outcome{latency: time.Since(at), failed: true}
		if run.Err() != nil { // the run ended the request, not its timeout
			var g givenUp
			if errors.As(context.Cause(run), &g) {
				o.givenUp, o.latency = true, g.at.Sub(at)
			} else {
				o.interrupted = true
			}
		}
		return o
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return outcome{latency: time.Since(at), failed: true}
	}
	resp, err := client.Do(req)
	if err != nil {
		return failed()
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return failed()
	}
	return outcome{
		latency: time.Since(at),
		source:  resp.Header.Get(httpmw.HeaderSource),
		failed:  resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound,
		missing: resp.StatusCode == http.StatusNotFound,
	}
}

// checkService fails fast, in one line, when nothing answers at base.
func checkService(ctx context.Context, client *http.Client, base string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
	if err != nil {
		return usageError{fmt.Errorf("-addr: %w", err)}
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("the service at %s does not answer: %w", base, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the service at %s is unhealthy: GET /healthz answered %s", base, resp.Status)
	}
	return nil
}

// keys draws ids from 1 to n with a Zipf distribution over ranks, and maps
// rank r to id (r * stride) mod n + 1, a bijection that scatters the hot
// keys over the whole key space, as real traffic does, rather than piling
// them at its start. Not safe for concurrent use.
type keys struct {
	zipf      *rand.Zipf
	n, stride uint64
}

func newKeys(c loadConfig, stream uint64) *keys {
	n := uint64(c.Rows)
	r := rand.New(rand.NewPCG(c.Seed, stream))
	stride := max(1, uint64(float64(n)*0.6180339887))
	for gcd(stride, n) != 1 {
		stride++
	}
	return &keys{zipf: rand.NewZipf(r, c.ZipfS, c.ZipfV, n-1), n: n, stride: stride}
}

func (k *keys) next() int64 { return k.id(k.zipf.Uint64()) }

// id returns the id of rank r, in [0, n).
func (k *keys) id(r uint64) int64 {
	hi, lo := bits.Mul64(r, k.stride) // no overflow, whatever n
	_, rem := bits.Div64(hi%k.n, lo, k.n)
	return int64(rem + 1)
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

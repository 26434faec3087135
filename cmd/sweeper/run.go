package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/internal/connect"
	"github.com/lazymigrate/lazymigrate/internal/metrics"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

const runHelp = `
Sweeps the key range of a table (OLD's smallest to largest key, or
--from..--to) in chunks of --chunk keys. For each chunk it asks the tracker
which keys are still unsettled and copies those from OLD to NEW with the
copier promotion uses, so that rows already in NEW are never overwritten
and deleted keys are never copied back; then it marks the whole chunk
settled, keys absent from OLD included. A chunk whose keys are all settled
costs one Redis call.

The sweep holds back while OLD or NEW answers slowly (--max-latency) or a
replica lags (--max-lag), and while 'sweeper pause' is in effect.

It can be stopped at any point, even with SIGKILL, and run again with the
same flags: it goes on where it stopped without copying settled chunks
again. SIGINT and SIGTERM let the chunks in flight finish, print the
summary and exit 130; a second signal ends the process at once. n
processes given --shard 0/n .. n-1/n share one sweep.

Exit codes: 0 swept; 1 NEW refused rows of some chunks (listed; fix them and
run again); 2 an error; 130 interrupted.`

// runFlags are run's settings.
type runFlags struct {
	conns
	tableFlags
	rangeFlags
	progressFlags
	prefix       string
	segmentBits  uint
	stripeBits   uint
	chunk        int64
	workers      int
	rate         float64
	maxLatency   time.Duration
	maxLag       time.Duration
	lagQuery     string
	nice         float64
	checkEvery   time.Duration
	stopTimeout  time.Duration
	metricsAddr  string
	pushgateway  string
	pushURL      *url.URL // pushgateway, parsed by check
	pushInterval time.Duration
	json         bool
}

func cmdRun(ctx context.Context, c *cli, args []string) (int, error) {
	var f runFlags
	c.flags("--table NAME [flags]", runHelp)
	c.oldFlag(&f.conns)
	c.newFlag(&f.conns)
	c.redisFlag(&f.conns)
	c.tableFlags(&f.tableFlags, true)
	c.rangeFlags(&f.rangeFlags, true)
	c.progressFlags(&f.progressFlags)
	c.prefixFlag(&f.prefix)
	c.segmentBitsFlag(&f.segmentBits)
	c.fs.UintVar(&f.stripeBits, "stripe-bits", 0, "lock stripe width, as the application's promote.CopierConfig.StripeBits (default: the width NEW has recorded for the table, else 10)")
	c.fs.Int64Var(&f.chunk, "chunk", coldsweep.DefaultChunk, "`keys` per chunk: the unit of copying, of resuming and of --shard; best a multiple of the lock stripe")
	c.fs.IntVar(&f.workers, "workers", coldsweep.DefaultWorkers, "`number` of chunks copied at once")
	c.fs.Float64Var(&f.rate, "rate", 0, "at most this many `keys` per second are copied (0: no limit)")
	c.fs.DurationVar(&f.maxLatency, "max-latency", 200*time.Millisecond, "hold the sweep while SELECT 1 takes longer than this on OLD or NEW (0: never)")
	c.fs.DurationVar(&f.maxLag, "max-lag", 10*time.Second, "hold the sweep while a replica of OLD or NEW lags more than this (0: never)")
	c.stringFlag(&f.lagQuery, "lag-query", coldsweep.DefaultLagQuery, "`SQL` returning the replication lag in seconds, run on both sides")
	c.fs.Float64Var(&f.nice, "nice", 0, "after each chunk a worker rests `ratio` times the chunk's duration (1 halves the load)")
	c.fs.DurationVar(&f.checkEvery, "check-interval", time.Second, "how often latency, lag and the pause flag are read")
	c.fs.DurationVar(&f.stopTimeout, "stop-timeout", time.Minute, "after SIGINT, SIGTERM or a fatal error, how long the chunks in flight may take to finish")
	c.stringFlag(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://`address`/metrics while running (e.g. :9400)")
	c.stringFlag(&f.pushgateway, "pushgateway", "", "push the metrics to the Pushgateway at `URL` (job lazymigrate_sweeper, grouped by table and shard) every --push-interval and at the end")
	c.fs.DurationVar(&f.pushInterval, "push-interval", 30*time.Second, "time between two pushes to --pushgateway")
	c.fs.BoolVar(&f.json, "json", false, "print the summary as JSON on stdout")
	if err := c.parse(args); err != nil {
		return exitError, err
	}
	if err := f.check(c); err != nil {
		return exitError, err
	}

	reg := prometheus.NewRegistry()
	if f.metricsAddr != "" {
		stop, err := c.serveMetrics(f.metricsAddr, reg)
		if err != nil {
			return exitError, err
		}
		defer stop()
	}

	// Each worker holds a connection on each side; the throttle a third.
	conns := int32(f.workers) + 4
	old, err := c.openOld(ctx, f.conns, conns)
	if err != nil {
		return exitError, err
	}
	defer old.Close()
	nw, err := c.openNew(ctx, f.conns, conns)
	if err != nil {
		return exitError, err
	}
	defer nw.Close()
	rdb, err := c.openRedis(ctx, f.conns)
	if err != nil {
		return exitError, err
	}
	defer func() { _ = rdb.Close() }()

	if _, err := describe(ctx, nw, "NEW", "table", f.table, f.key, true); err != nil {
		return exitError, err
	}
	if _, err := describe(ctx, old, "OLD", f.oldTableFlag, f.oldTable, f.key, false); err != nil {
		return exitError, err
	}
	if err := checkSchema(ctx, nw); err != nil {
		return exitError, err
	}

	tr, err := newTracker(ctx, rdb, f.table, f.prefix, f.segmentBits, reg)
	if err != nil {
		return exitError, err
	}
	cp, err := promote.NewCopier(ctx, old, nw, &promote.CopierConfig{
		Table: f.table, OldTable: f.oldTable, KeyColumn: f.key, StripeBits: f.stripeBits,
		Marker: tr, Logger: c.log, Registerer: reg,
	})
	if err != nil {
		return exitError, err
	}
	span, ok, err := f.span(func() (int64, int64, bool, error) {
		lo, hi, ok, err := cp.OldBounds(ctx)
		if err == nil && ok && lo < 0 {
			err = fmt.Errorf("OLD's %s holds key %d: lazymigrate keys are integers >= 0 (give --from 0)", f.oldTable, lo)
		}
		return lo, hi, ok, err
	})
	if err != nil {
		return exitError, err
	}
	if !ok {
		// An empty Range would mean "OLD's whole key range" to coldsweep.
		c.log.Info("nothing to sweep: no key in the range", "table", f.table)
		span = coldsweep.Span{}
	}

	rep := newSweepReporter(c, f.progressFlags)
	cfg := &coldsweep.Config{
		Copier: cp, Tracker: tr, Redis: rdb, Prefix: f.prefix,
		Range: span, Chunk: f.chunk, Workers: f.workers, Shard: f.sh, Rate: f.rate,
		Throttle: &coldsweep.ThrottleConfig{
			Old: old, New: nw, Interval: f.checkEvery,
			MaxLatency: orOff(f.maxLatency), MaxLag: orOff(f.maxLag), LagQuery: f.lagQuery, Nice: f.nice,
		},
		StopTimeout:      f.stopTimeout,
		ProgressInterval: min(f.every, time.Second),
		Progress:         rep.update,
		Logger:           c.log,
		Registerer:       reg,
	}
	var sw *coldsweep.Sweeper
	if ok {
		if sw, err = coldsweep.New(cfg); err != nil {
			return exitError, err
		}
	}

	var push *pusher
	if f.pushgateway != "" {
		push = c.startPusher(f.pushURL, f.table, f.sh.String(), reg, f.pushInterval)
	}

	stopWatch := context.AfterFunc(ctx, func() {
		c.log.Info("interrupted: finishing the chunks in flight; a second signal ends the process at once")
	})
	var sum *coldsweep.Summary
	if sw != nil {
		sum, err = sw.Run(ctx)
	} else {
		sum = &coldsweep.Summary{Progress: coldsweep.Progress{Table: f.table, Shard: f.sh.String(), Finished: true}}
	}
	stopWatch()
	rep.done()

	code := exitOK
	switch {
	case err == nil:
		metrics.GaugeVec(reg, "sweep_last_success_timestamp_seconds",
			"When a sweep of the table last finished with every chunk settled (Unix time).", "table").
			WithLabelValues(f.table).SetToCurrentTime()
	case errors.Is(err, coldsweep.ErrInterrupted):
		code, err = exitInterrupted, nil
	case errors.Is(err, coldsweep.ErrChunksFailed):
		code, err = exitDifferent, nil
	default:
		code = exitError
	}
	if sum != nil {
		if perr := c.printSummary(sum, code, err, f.json); perr != nil && err == nil {
			err = perr
		}
	}
	if push != nil {
		push.finish(context.WithoutCancel(ctx))
	}
	return code, err
}

// Bounds of run's flags beyond which the values make no sense.
const (
	// maxWorkers keeps the pools' size, workers plus a few, an int32.
	maxWorkers = 1024
	// maxNice keeps a worker's rest, nice times a chunk's duration, far
	// from overflowing a time.Duration.
	maxNice = 1000
)

func (f *runFlags) check(c *cli) error {
	if err := f.tableFlags.check(); err != nil {
		return err
	}
	if err := f.rangeFlags.check(); err != nil {
		return err
	}
	switch {
	case f.chunk < 1 || f.chunk > promote.MaxRangeKeys:
		return flagError("chunk", f.chunk, "must be between 1 and %d", promote.MaxRangeKeys)
	case f.workers < 1 || f.workers > maxWorkers:
		return flagError("workers", f.workers, "must be between 1 and %d", maxWorkers)
	case math.IsNaN(f.rate) || math.IsInf(f.rate, 0) || f.rate < 0:
		return flagError("rate", f.rate, "must be a number >= 0 (0 means no limit)")
	case math.IsNaN(f.nice) || f.nice < 0 || f.nice > maxNice:
		return flagError("nice", f.nice, "must be between 0 and %d", maxNice)
	case f.maxLatency < 0:
		return flagError("max-latency", f.maxLatency, "must not be negative (0 turns it off)")
	case f.maxLag < 0:
		return flagError("max-lag", f.maxLag, "must not be negative (0 turns it off)")
	case f.checkEvery <= 0:
		return flagError("check-interval", f.checkEvery, "must be positive")
	case f.stopTimeout <= 0:
		return flagError("stop-timeout", f.stopTimeout, "must be positive")
	case f.pushInterval <= 0:
		return flagError("push-interval", f.pushInterval, "must be positive")
	case f.lagQuery == "":
		return flagError("lag-query", f.lagQuery, "give a query (--max-lag 0 turns the lag check off)")
	case f.stripeBits > 40:
		return flagError("stripe-bits", f.stripeBits, "must be at most 40")
	}
	if err := checkPrefix(f.prefix); err != nil {
		return err
	}
	if err := checkSegmentBits(f.segmentBits); err != nil {
		return err
	}
	if f.pushgateway != "" {
		u, err := url.Parse(f.pushgateway)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return flagError("pushgateway", connect.RedactURL(f.pushgateway), "want the Pushgateway's http:// or https:// URL")
		}
		f.pushURL = u
	}
	return f.progressFlags.check(c)
}

// orOff turns the CLI's "0 turns it off" into ThrottleConfig's negative.
func orOff(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// Tracker settings shared by run, status and rebuild-tracker.

const (
	defaultPrefix      = "lazymigrate"
	defaultSegmentBits = 20
)

func (c *cli) prefixFlag(p *string) {
	c.stringFlag(p, "prefix", defaultPrefix, "`prefix` of lazymigrate's Redis keys: the tracker's, the sweep's progress and pause flag (the application's tracker.Config.Prefix)")
}

func (c *cli) segmentBitsFlag(p *uint) {
	c.fs.UintVar(p, "segment-bits", defaultSegmentBits, "log2 of the keys per tracker segment: the application's tracker.Config.SegmentBits")
}

func checkPrefix(p string) error {
	if p == "" {
		return flagError("prefix", p, "must not be empty")
	}
	return nil
}

func checkSegmentBits(b uint) error {
	if b < 10 || b > 28 {
		return flagError("segment-bits", b, "must be between 10 and 28")
	}
	return nil
}

// newTracker returns the table's tracker after checking that its bitmap
// in Redis was written with the same segment bits: a mismatch is an error
// to report now, with the flag to give, not a chunk failure to retry for
// minutes. The check reads the layout key the tracker documents, without
// claiming it; the tracker's own reads do not claim it either (only its
// writes do), so that status run with wrong flags leaves no trace.
func newTracker(ctx context.Context, rdb redis.UniversalClient, table, prefix string, bits uint, reg prometheus.Registerer) (*tracker.Tracker, error) {
	tr, err := tracker.New(rdb, table, &tracker.Config{Prefix: prefix, SegmentBits: bits, Registerer: reg})
	if err != nil {
		return nil, err
	}
	got, ok, err := trackerLayout(ctx, rdb, table, prefix)
	if err != nil {
		return nil, err
	}
	if ok && got != strconv.FormatUint(uint64(bits), 10) {
		return nil, fmt.Errorf("--segment-bits %d: the tracker of %s in Redis was written with %s (give --segment-bits %s, as the application's tracker.Config.SegmentBits)",
			bits, table, got, got)
	}
	return tr, nil
}

// trackerLayout returns the segment bits the table's bitmap was written
// with, as its layout key records them; ok is false when none is recorded.
func trackerLayout(ctx context.Context, rdb redis.UniversalClient, table, prefix string) (bits string, ok bool, err error) {
	key := prefix + ":tracker:" + table + ":segment_bits"
	bits, err = rdb.Get(ctx, key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("read %s from Redis: %w", key, err)
	}
	return bits, true, nil
}

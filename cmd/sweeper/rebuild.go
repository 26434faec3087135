package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/coldsweep"
	"github.com/lazymigrate/lazymigrate/tracker"
)

const rebuildHelp = `
Rebuilds the tracker's bitmap of a table from NEW, after Redis lost it: it
marks every key NEW holds and every key tombstoned for the table. It only
adds bits, so it is safe while the application and sweepers run.

Keys that are in neither (absent from OLD too, which a sweep had marked
settled) stay unmarked until the next 'sweeper run', which settles them
again without copying anything. --reset first deletes the whole bitmap, to
drop bits NEW does not justify; do that only while nothing else runs. It
refuses while a sweep of the table is running or held (as 'sweeper status'
shows it), and refuses --segment-bits other than the bitmap's, unless
--force: a new layout holds only once every application and sweeper process
of the table has restarted with it.`

func cmdRebuild(ctx context.Context, c *cli, args []string) (int, error) {
	var (
		cs          conns
		tf          tableFlags
		prefix      string
		segmentBits uint
		reset       bool
		force       bool
	)
	c.flags("--table NAME [flags]", rebuildHelp)
	c.newFlag(&cs)
	c.redisFlag(&cs)
	c.tableFlags(&tf, false)
	c.prefixFlag(&prefix)
	c.segmentBitsFlag(&segmentBits)
	c.fs.BoolVar(&reset, "reset", false, "delete the table's bitmap first")
	c.fs.BoolVar(&force, "force", false, "--reset even while a sweep of the table is live, or with other --segment-bits than the bitmap's")
	if err := c.parse(args); err != nil {
		return exitError, err
	}
	if err := tf.check(); err != nil {
		return exitError, err
	}
	if err := checkPrefix(prefix); err != nil {
		return exitError, err
	}
	if err := checkSegmentBits(segmentBits); err != nil {
		return exitError, err
	}
	nw, err := c.openNew(ctx, cs, 0)
	if err != nil {
		return exitError, err
	}
	defer nw.Close()
	rdb, err := c.openRedis(ctx, cs)
	if err != nil {
		return exitError, err
	}
	defer func() { _ = rdb.Close() }()
	if _, err := describe(ctx, nw, "NEW", "table", tf.table, tf.key, false); err != nil {
		return exitError, err
	}
	if err := checkSchema(ctx, nw); err != nil {
		return exitError, err
	}
	if reset {
		if err := checkReset(ctx, c, rdb, tf.table, prefix, segmentBits, force); err != nil {
			return exitError, err
		}
		// The layout check would refuse a bitmap of other segment bits;
		// after a reset any layout is fine.
		tr, err := tracker.New(rdb, tf.table, &tracker.Config{Prefix: prefix, SegmentBits: segmentBits})
		if err != nil {
			return exitError, err
		}
		if err := tr.Reset(ctx); err != nil {
			return exitError, err
		}
	}
	tr, err := newTracker(ctx, rdb, tf.table, prefix, segmentBits, nil)
	if err != nil {
		return exitError, err
	}
	marked, err := tr.Rebuild(ctx, nw, tf.table, tf.key)
	if err != nil {
		return exitError, err
	}
	total, err := tr.Count(ctx)
	if err != nil {
		return exitError, err
	}
	what := "rebuilt"
	if reset {
		what = "reset and rebuilt"
	}
	fmt.Fprintf(c.stdout, "%s the tracker of %s from NEW: %s keys newly marked, %s settled in all\n",
		what, tf.table, human(marked), human(total))
	return exitOK, nil
}

// defaultStaleAfter is how long a sweep may save no progress before status
// calls it stale (--stale-after's default), and --reset no longer takes it
// for live.
const defaultStaleAfter = time.Minute

// checkReset refuses a --reset that would pull the bitmap from under a
// live sweep, whose sweeper keeps its layout and its marks, or that would
// change the layout of the bitmap; force lets both through, with a warning.
func checkReset(ctx context.Context, c *cli, rdb redis.UniversalClient, table, prefix string, bits uint, force bool) error {
	progress, err := coldsweep.LoadProgress(ctx, rdb, prefix, table)
	if err != nil {
		return err
	}
	now := time.Now()
	var live []string
	for _, p := range progress {
		if st := p.State(now, defaultStaleAfter); st.Live() {
			live = append(live, fmt.Sprintf("shard %s %s", p.Shard, st))
		}
	}
	if len(live) > 0 {
		if !force {
			return fmt.Errorf("--reset: the sweep of %s is live (%s; see 'sweeper status'): stop it first, or give --force",
				table, strings.Join(live, ", "))
		}
		c.log.Warn("resetting the tracker under a live sweep: its sweepers keep marking chunks settled; restart them",
			"table", table, "shards", strings.Join(live, ", "))
	}

	got, ok, err := trackerLayout(ctx, rdb, table, prefix)
	switch {
	case err != nil:
		return err
	case !ok || got == strconv.FormatUint(uint64(bits), 10):
	case !force:
		return fmt.Errorf("--segment-bits %d: the tracker of %s in Redis was written with %s: give --segment-bits %s, "+
			"or --force to change the layout, then restart every application and sweeper process of the table with %d",
			bits, table, got, got, bits)
	default:
		c.log.Warn("changing the tracker's layout: restart every application and sweeper process of the table with the new segment bits "+
			"(tracker.Config.SegmentBits, --segment-bits) before they write again", "table", table, "from", got, "to", bits)
	}
	return nil
}

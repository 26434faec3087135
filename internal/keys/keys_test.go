package keys

import (
	"errors"
	"slices"
	"testing"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	if err := Check(0); err != nil {
		t.Fatalf("Check(0) = %v, want nil", err)
	}
	if err := Check(-1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Check(-1) = %v, want ErrInvalid", err)
	}
	if err := CheckAll([]int64{1, 2, -3}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CheckAll = %v, want ErrInvalid", err)
	}
	if err := CheckRange(5, 4); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CheckRange(5,4) = %v, want ErrInvalid", err)
	}
	if err := CheckRange(4, 4); err != nil {
		t.Fatalf("CheckRange(4,4) = %v, want nil", err)
	}
}

func TestSortedUnique(t *testing.T) {
	t.Parallel()
	in := []int64{5, 1, 5, 3, 1}
	got := SortedUnique(in)
	if want := []int64{1, 3, 5}; !slices.Equal(got, want) {
		t.Fatalf("SortedUnique = %v, want %v", got, want)
	}
	if in[0] != 5 {
		t.Fatalf("SortedUnique modified its input: %v", in)
	}
}

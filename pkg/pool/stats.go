package pool

// Stats describes a pool at one moment. Byte counts are block sizes, except
// Requested which sums the sizes asked for.
type Stats struct {
	Allocated       uint64  `json:"allocated"`
	Requested       uint64  `json:"requested"`
	Reserved        uint64  `json:"reserved"`
	PeakAllocated   uint64  `json:"peak_allocated"`
	PeakReserved    uint64  `json:"peak_reserved"`
	Segments        int     `json:"segments"`
	ActiveBlocks    int     `json:"active_blocks"`
	FreeBlocks      int     `json:"free_blocks"`
	LargestFree     uint64  `json:"largest_free"`
	Allocs          uint64  `json:"allocs"`
	Frees           uint64  `json:"frees"`
	SegmentAllocs   uint64  `json:"segment_allocs"`
	SegmentReleases uint64  `json:"segment_releases"`
	Fragmentation   float64 `json:"fragmentation"` // 1 - largest free block / all free bytes
}

// Stats returns the pool's current statistics.
func (p *Pool[S]) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	var free uint64
	for _, set := range p.sets {
		s.FreeBlocks += set.Len()
		if m, ok := set.Max(); ok && m.size > s.LargestFree {
			s.LargestFree = m.size
		}
	}
	free = s.Reserved - s.Allocated
	if free > 0 {
		s.Fragmentation = 1 - float64(s.LargestFree)/float64(free)
	}
	return s
}

// Add sums two stats (peaks are summed too: an upper bound of the joint peak).
func (s Stats) Add(o Stats) Stats {
	s.Allocated += o.Allocated
	s.Requested += o.Requested
	s.Reserved += o.Reserved
	s.PeakAllocated += o.PeakAllocated
	s.PeakReserved += o.PeakReserved
	s.Segments += o.Segments
	s.ActiveBlocks += o.ActiveBlocks
	s.FreeBlocks += o.FreeBlocks
	if o.LargestFree > s.LargestFree {
		s.LargestFree = o.LargestFree
	}
	s.Allocs += o.Allocs
	s.Frees += o.Frees
	s.SegmentAllocs += o.SegmentAllocs
	s.SegmentReleases += o.SegmentReleases
	if free := s.Reserved - s.Allocated; free > 0 {
		s.Fragmentation = 1 - float64(s.LargestFree)/float64(free)
	} else {
		s.Fragmentation = 0
	}
	return s
}

package main

import (
	"context"
	"sort"

	"github.com/redis/go-redis/v9"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/registry"
)

// listAllNodes reads every agent's registry from a shared Redis: the agents
// add their --redis-prefix to <cluster-prefix>prefixes.
func listAllNodes(ctx context.Context, url, clusterPrefix, namePrefix string) ([]v1.Tensor, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, usagef("--redis-url: %v", err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	prefixes, err := rdb.SMembers(ctx, registry.PrefixesKey(clusterPrefix)).Result()
	if err != nil {
		return nil, registry.Wrap(err)
	}
	sort.Strings(prefixes)
	var out []v1.Tensor
	for _, p := range prefixes {
		for cursor := ""; ; {
			list, next, err := registry.New(rdb, registry.Keys{Prefix: p}).List(ctx, namePrefix, cursor, v1.MaxListLimit)
			if err != nil {
				return nil, err
			}
			out = append(out, list...)
			if next == "" {
				break
			}
			cursor = next
		}
	}
	return out, nil
}

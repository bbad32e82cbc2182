package main

import (
	"context"
	"sort"

	"github.com/redis/go-redis/v9"

	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// listAllNodes reads every agent's registry from a shared Redis: the agents
// add their --redis-prefix to <cluster-prefix>prefixes.
func listAllNodes(ctx context.Context, url, clusterPrefix string) ([]tensor.Info, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, usageError{"--redis-url: " + err.Error()}
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	prefixes, err := rdb.SMembers(ctx, registry.PrefixesKey(clusterPrefix)).Result()
	if err != nil {
		return nil, registry.Wrap(err)
	}
	sort.Strings(prefixes)
	var out []tensor.Info
	for _, p := range prefixes {
		list, err := registry.New(rdb, registry.Keys{Prefix: p}).List(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, list...)
	}
	return out, nil
}

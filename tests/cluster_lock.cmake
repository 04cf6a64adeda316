# Included by ctest after every discovered test list (TEST_INCLUDE_FILES, appended last).
# The tests that start a six-node Redis Cluster pick twelve free loopback ports each; two
# of them starting at once can be handed the same just-released port and join each
# other's nodes ("node is not empty"), so they take one lock and run one at a time.
foreach(test IN LISTS redis_cluster_test_TESTS fanout_checker_test_TESTS
                      session_failover_test_TESTS)
  if(test MATCHES "^RedisClusterTest\\.|^ClusterChecker\\.|OnARedisCluster")
    set_tests_properties("${test}" PROPERTIES RESOURCE_LOCK redis_cluster)
  endif()
endforeach()

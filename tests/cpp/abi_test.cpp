#include <gtest/gtest.h>

#include "attnforge/attnforge.h"

TEST(Abi, VersionsAgree) { EXPECT_EQ(af_version_number(), AF_VERSION_NUMBER); }

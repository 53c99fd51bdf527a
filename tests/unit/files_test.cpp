// parallel/files.h: the POSIX file-system helpers that replace <filesystem> (see its header).
#include "parallel/files.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "parallel/error.h"

namespace ftune::files {
namespace {

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = Join(TempDir(), "ftune_files_test_" + std::to_string(::getpid()));
    RemoveAll(dir_);
    CreateDirectories(dir_);
  }
  void TearDown() override { RemoveAll(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    const std::string p = Join(dir_, name);
    std::ofstream(p) << text;
    return p;
  }
  std::string dir_;
};

TEST(FilesPaths, JoinParentBaseName) {
  EXPECT_EQ(Join("a", "b"), "a/b");
  EXPECT_EQ(Join("a/", "b"), "a/b");
  EXPECT_EQ(Join("", "b"), "b");
  EXPECT_EQ(Join("a", "/b"), "/b");
  EXPECT_EQ(Parent("a/b/c.h5"), "a/b");
  EXPECT_EQ(Parent("a/b/"), "a");
  EXPECT_EQ(Parent("c"), "");
  EXPECT_EQ(Parent("/c"), "/");
  EXPECT_EQ(BaseName("a/b/c.h5"), "c.h5");
  EXPECT_EQ(BaseName("a/b/"), "b");
  EXPECT_EQ(BaseName("c"), "c");
  EXPECT_EQ(Absolute("/x/y"), "/x/y");
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  EXPECT_EQ(Absolute("x"), std::string(cwd) + "/x");
}

TEST_F(FilesTest, PredicatesAndSizes) {
  const std::string f = Write("f.txt", "hello");
  EXPECT_TRUE(Exists(f));
  EXPECT_TRUE(IsFile(f));
  EXPECT_FALSE(IsDirectory(f));
  EXPECT_TRUE(IsDirectory(dir_));
  EXPECT_FALSE(Exists(Join(dir_, "missing")));
  EXPECT_EQ(FileSize(f), 5);
  EXPECT_THROW(FileSize(Join(dir_, "missing")), IoError);
  EXPECT_THROW(FileSize(dir_), IoError);
  EXPECT_FALSE(IsEmpty(f));
  EXPECT_FALSE(IsEmpty(dir_));
  CreateDirectories(Join(dir_, "empty"));
  EXPECT_TRUE(IsEmpty(Join(dir_, "empty")));
  ResizeFile(f, 2);
  EXPECT_EQ(FileSize(f), 2);
}

TEST_F(FilesTest, CreateListRemove) {
  const std::string deep = Join(dir_, "a/b/c");
  CreateDirectories(deep);
  CreateDirectories(deep);  // existing is fine
  EXPECT_TRUE(IsDirectory(deep));
  Write("a/b/x", "1");
  Write("a/y", "2");
  ASSERT_EQ(::symlink(dir_.c_str(), Join(dir_, "a/link").c_str()), 0);
  EXPECT_EQ(ListDir(Join(dir_, "a")), (std::vector<std::string>{"b", "link", "y"}));
  // The link is removed, not followed: dir_ itself survives.
  EXPECT_EQ(RemoveAll(Join(dir_, "a")), 6);  // a, a/b, a/b/c, a/b/x, a/y, a/link
  EXPECT_FALSE(Exists(Join(dir_, "a")));
  EXPECT_TRUE(IsDirectory(dir_));
  EXPECT_EQ(RemoveAll(Join(dir_, "a")), 0);  // nothing there is not an error
  const std::string f = Write("f", "x");
  EXPECT_EQ(RemoveAll(Join(f, "sub")), 0);  // nor is a file where a directory would be
  EXPECT_THROW(CreateDirectories(Join(f, "sub")), IoError);  // a file in the way
  EXPECT_TRUE(Remove(f));
  EXPECT_FALSE(Remove(f));
  EXPECT_THROW(ListDir(f), IoError);
}

TEST_F(FilesTest, RemoveQuietly) {
  const std::string f = Write("f", "x"), d = Join(dir_, "d");
  CreateDirectories(Join(d, "e"));
  RemoveQuietly(d);  // not empty: stays, and no error
  EXPECT_TRUE(IsDirectory(Join(d, "e")));
  RemoveQuietly(f);
  EXPECT_FALSE(Exists(f));
  RemoveQuietly(f);  // nothing there
  const std::string bad = Join(dir_, std::string(300, 'x'));  // a name too long
  EXPECT_THROW(RemoveAll(bad), IoError);
  RemoveAllQuietly(bad);
  RemoveAllQuietly(d);
  EXPECT_FALSE(Exists(d));
}

TEST_F(FilesTest, RenameAndCopy) {
  const std::string a = Write("a", "payload"), b = Join(dir_, "b"), c = Join(dir_, "c");
  CopyFile(a, b, /*overwrite=*/false);
  EXPECT_EQ(FileSize(b), 7);
  EXPECT_THROW(CopyFile(a, b, /*overwrite=*/false), IoError);
  Write("a", "xy");
  CopyFile(a, b, /*overwrite=*/true);
  EXPECT_EQ(FileSize(b), 2);
  Rename(b, c);
  EXPECT_FALSE(Exists(b));
  EXPECT_EQ(FileSize(c), 2);
  try {
    Rename(b, c);
    FAIL() << "renaming a missing file must throw";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(b), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ftune::files

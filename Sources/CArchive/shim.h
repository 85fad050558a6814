// libarchive (Debian's libarchive-dev), for unpacking releases.
// BatonReleases is the only module that imports it.
#ifndef BATON_CARCHIVE_SHIM_H
#define BATON_CARCHIVE_SHIM_H

#include <archive.h>
#include <archive_entry.h>

#endif

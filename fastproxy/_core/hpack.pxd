# Declarations of the HPACK codec (hpack.pyx), cimported by the HTTP/2 session.
cimport cython
from libc.stdint cimport uint64_t


@cython.final
cdef class _Table:
    cdef list entries          # (name, value), newest first
    cdef Py_ssize_t size
    cdef Py_ssize_t max_size
    cdef uint64_t inserted     # entries added so far: an entry's id is its insertion number
    cdef void add(self, bytes name, bytes value)
    cdef void resize(self, Py_ssize_t max_size)
    cdef void evict(self)
    cdef tuple get(self, uint64_t index)


@cython.final
cdef class Decoder:
    cdef _Table table
    cdef public Py_ssize_t max_table_size   # SETTINGS_HEADER_TABLE_SIZE we announced
    cdef public Py_ssize_t max_list_size    # decoded name + value + 32 per field, at most
    cdef public Py_ssize_t max_fields       # fields per list, at most
    cdef readonly bint oversized            # the last list went over a limit: cut short
    cdef list decode_block(self, bytes block)


@cython.final
cdef class Encoder:
    cdef _Table table
    cdef dict fields           # (name, value) -> insertion id, for dynamic entries
    cdef dict names            # name -> insertion id
    cdef Py_ssize_t pending_size   # a table size to announce at the start of the next block, or -1
    cdef bytearray out
    cdef bytes encode_list(self, list headers)
    cdef void field(self, bytearray out, bytes name, bytes value)
    cdef void forget_evicted(self)

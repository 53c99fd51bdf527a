#!/usr/bin/env python3
"""Reads TensorBoard event files independently of ftune's writer: the record framing with its
masked CRC-32C checked (a bitwise CRC here, not ftune's table), and every payload decoded by
protobuf's own library as tensorflow.Event (the message types are declared below with
TensorFlow's field numbers: event.proto, summary.proto, tensor.proto, tensor_shape.proto).

  tensorboard_read.py DIR   prints one JSON line per scalar {"tag", "step", "value"} and per text
                            {"tag", "step", "text"}, after {"file_version": ...}
Exits non-zero on a bad CRC, a truncated record or a payload protobuf cannot parse."""
import glob
import json
import os
import struct
import sys

from google.protobuf import descriptor_pb2, descriptor_pool

try:
    from google.protobuf.message_factory import GetMessageClass
except ImportError:  # protobuf < 4.21
    from google.protobuf import message_factory

    def GetMessageClass(desc):
        return message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)


def schema():
    f = descriptor_pb2.FileDescriptorProto(name="tb_event.proto", package="tensorflow", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto

    def msg(name, fields):
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = ".tensorflow." + type_name
        return m

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    msg("Dim", [("size", 1, T.TYPE_INT64, opt, None), ("name", 2, T.TYPE_STRING, opt, None)])
    msg("TensorShapeProto", [("dim", 2, T.TYPE_MESSAGE, rep, "Dim"),
                             ("unknown_rank", 3, T.TYPE_BOOL, opt, None)])
    msg("TensorProto", [("dtype", 1, T.TYPE_INT32, opt, None),
                        ("tensor_shape", 2, T.TYPE_MESSAGE, opt, "TensorShapeProto"),
                        ("string_val", 8, T.TYPE_BYTES, rep, None)])
    msg("PluginData", [("plugin_name", 1, T.TYPE_STRING, opt, None),
                       ("content", 2, T.TYPE_BYTES, opt, None)])
    msg("SummaryMetadata", [("plugin_data", 1, T.TYPE_MESSAGE, opt, "PluginData"),
                            ("display_name", 2, T.TYPE_STRING, opt, None)])
    msg("Value", [("tag", 1, T.TYPE_STRING, opt, None),
                  ("simple_value", 2, T.TYPE_FLOAT, opt, None),
                  ("tensor", 8, T.TYPE_MESSAGE, opt, "TensorProto"),
                  ("metadata", 9, T.TYPE_MESSAGE, opt, "SummaryMetadata")])
    msg("Summary", [("value", 1, T.TYPE_MESSAGE, rep, "Value")])
    msg("Event", [("wall_time", 1, T.TYPE_DOUBLE, opt, None), ("step", 2, T.TYPE_INT64, opt, None),
                  ("file_version", 3, T.TYPE_STRING, opt, None),
                  ("summary", 5, T.TYPE_MESSAGE, opt, "Summary")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return GetMessageClass(pool.FindMessageTypeByName("tensorflow.Event"))


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            sys.exit(f"{path}: truncated record header at byte {pos}")
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if hcrc != masked(header):
            sys.exit(f"{path}: bad length CRC at byte {pos}")
        payload = data[pos + 12:pos + 12 + length]
        if len(payload) != length or pos + 16 + length > len(data):
            sys.exit(f"{path}: truncated record at byte {pos}")
        (pcrc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if pcrc != masked(payload):
            sys.exit(f"{path}: bad payload CRC at byte {pos}")
        yield payload
        pos += 16 + length


def main():
    Event = schema()
    files = sorted(glob.glob(os.path.join(sys.argv[1], "events.out.tfevents.*")))
    if not files:
        sys.exit(f"no event files in {sys.argv[1]}")
    for path in files:
        for payload in records(path):
            e = Event()
            e.ParseFromString(payload)
            if e.file_version:
                print(json.dumps({"file_version": e.file_version}))
            for v in e.summary.value:
                if v.HasField("tensor"):
                    assert v.metadata.plugin_data.plugin_name == "text", v
                    assert v.tensor.dtype == 7, v  # DT_STRING
                    print(json.dumps({"tag": v.tag, "step": e.step,
                                      "text": v.tensor.string_val[0].decode("utf-8")}))
                else:
                    print(json.dumps({"tag": v.tag, "step": e.step, "value": v.simple_value}))


main()
